package policy

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// doc wraps principals and purposes JSON fragments into a version 1 policy.
func doc(purposes, principals string) string {
	return `{"version": 1, "purposes": [` + purposes + `], "principals": [` + principals + `]}`
}

const stdPurposes = `{"name": "settlement", "fields": ["amount", "pricing"]}, {"name": "dispute", "fields": ["*"]}`

func mustParse(t *testing.T, js string) *Policy {
	t.Helper()
	p, err := Parse([]byte(js))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	return p
}

func TestParseErrors(t *testing.T) {
	t.Parallel()
	app := func(grant string) string {
		return doc(stdPurposes, `{"name": "app", "users": ["root"], "roles": ["application"], "act_as": [`+grant+`]}`)
	}
	win := func(w string) string {
		return app(`{"participants": ["client-1"], "purposes": ["settlement"], "windows": [` + w + `]}`)
	}
	tests := []struct {
		name, js string
		want     string // "path: message" fragment the error must contain
	}{
		{"not json", `{"version": 1,`, "invalid JSON"},
		{"trailing data", doc(stdPurposes, `{"name": "a", "users": ["root"], "roles": ["admin"]}`) + `{}`, "unexpected data after the policy object"},
		{"top not object", `[]`, "must be an object, not an array"},
		{"missing version", `{"principals": [{"name": "a", "users": ["root"], "roles": ["admin"]}]}`, "version: required"},
		{"wrong version", `{"version": 2, "principals": [{"name": "a", "users": ["root"], "roles": ["admin"]}]}`, "version: unsupported version 2"},
		{"version as string", `{"version": "1", "principals": [{"name": "a", "users": ["root"], "roles": ["admin"]}]}`, "version: must be a number, not a string"},
		{"unknown top field", `{"version": 1, "principles": [], "principals": [{"name": "a", "users": ["root"], "roles": ["admin"]}]}`, "principles: unknown field"},
		{"duplicate key", `{"version": 1, "version": 1}`, "version: duplicate key"},
		{"field names are case-sensitive", `{"Version": 1}`, "Version: unknown field"},
		{"odd key quoted in path", `{"version": 1, "a b": 1}`, `["a b"]: unknown field`},
		{"no principals", `{"version": 1}`, "principals: required"},
		{"empty principals", `{"version": 1, "principals": []}`, "principals: must not be empty"},
		{"too deep", `{"version": 1, "comment": ` + strings.Repeat("[", 40) + strings.Repeat("]", 40) + `}`, "nested deeper than"},

		{"purpose unknown field", doc(`{"name": "x", "fields": ["a"], "feilds": []}`, `{"name": "a", "users": ["root"], "roles": ["admin"]}`), "purposes[0].feilds: unknown field"},
		{"purpose bad name", doc(`{"name": "Settle ment", "fields": ["a"]}`, `{"name": "a", "users": ["root"], "roles": ["admin"]}`), `purposes[0].name: invalid purpose name "Settle ment"`},
		{"purpose duplicate", doc(`{"name": "x", "fields": ["a"]}, {"name": "x", "fields": ["b"]}`, `{"name": "a", "users": ["root"], "roles": ["admin"]}`), `purposes[1].name: purpose "x" is already defined at purposes[0]`},
		{"purpose no fields", doc(`{"name": "x"}`, `{"name": "a", "users": ["root"], "roles": ["admin"]}`), "purposes[0].fields: required"},
		{"purpose empty fields", doc(`{"name": "x", "fields": []}`, `{"name": "a", "users": ["root"], "roles": ["admin"]}`), "purposes[0].fields: must not be empty"},
		{"purpose star not alone", doc(`{"name": "x", "fields": ["a", "*"]}`, `{"name": "a", "users": ["root"], "roles": ["admin"]}`), `purposes[0].fields[1]: "*" (all fields) must be the only entry`},
		{"purpose bad field", doc(`{"name": "x", "fields": ["a", "b c"]}`, `{"name": "a", "users": ["root"], "roles": ["admin"]}`), `purposes[0].fields[1]: invalid field name "b c"`},
		{"purpose duplicate field", doc(`{"name": "x", "fields": ["a", "a"]}`, `{"name": "a", "users": ["root"], "roles": ["admin"]}`), `purposes[0].fields[1]: "a" repeats purposes[0].fields[0]`},
		{"purpose field not string", doc(`{"name": "x", "fields": [1]}`, `{"name": "a", "users": ["root"], "roles": ["admin"]}`), `purposes[0].fields[0]: must be a string, not a number`},

		{"principal unknown field", doc(stdPurposes, `{"name": "a", "users": ["root"], "roles": ["admin"], "group": ["adm"]}`), "principals[0].group: unknown field"},
		{"principal no name", doc(stdPurposes, `{"users": ["root"], "roles": ["admin"]}`), "principals[0].name: required"},
		{"principal bad name", doc(stdPurposes, `{"name": "A!", "users": ["root"], "roles": ["admin"]}`), `principals[0].name: invalid principal name "A!"`},
		{"principal duplicate", doc(stdPurposes, `{"name": "a", "users": ["root"], "roles": ["admin"]}, {"name": "a", "users": ["daemon"], "roles": ["admin"]}`), `principals[1].name: principal "a" is already defined at principals[0]`},
		{"principal covers nobody", doc(stdPurposes, `{"name": "a", "roles": ["admin"]}`), "principals[0]: names no users and no groups"},
		{"principal empty users", doc(stdPurposes, `{"name": "a", "users": [], "roles": ["admin"]}`), "principals[0].users: must not be empty; omit the field instead"},
		{"principal no roles", doc(stdPurposes, `{"name": "a", "users": ["root"]}`), "principals[0].roles: required"},
		{"unknown role", doc(stdPurposes, `{"name": "a", "users": ["root"], "roles": ["admin", "admn"]}`), `principals[0].roles[1]: unknown role "admn"`},
		{"duplicate role", doc(stdPurposes, `{"name": "a", "users": ["root"], "roles": ["admin", "admin"]}`), `principals[0].roles[1]: "admin" repeats principals[0].roles[0]`},
		{"roles not array", doc(stdPurposes, `{"name": "a", "users": ["root"], "roles": "admin"}`), `principals[0].roles: must be an array, not a string`},
		{"invalid user name", doc(stdPurposes, `{"name": "a", "users": ["ro:ot"], "roles": ["admin"]}`), `principals[0].users[0]: invalid user name "ro:ot"`},
		{"numeric user name", doc(stdPurposes, `{"name": "a", "users": ["0"], "roles": ["admin"]}`), `principals[0].users[0]: invalid user name "0"`},
		{"unknown user", doc(stdPurposes, `{"name": "a", "users": ["root", "cpol-nosuchuser"], "roles": ["admin"]}`), `principals[0].users[1]: unknown user "cpol-nosuchuser"`},
		{"unknown group", doc(stdPurposes, `{"name": "a", "groups": ["cpol-nosuchgroup"], "roles": ["admin"]}`), `principals[0].groups[0]: unknown group "cpol-nosuchgroup"`},
		{"user in two principals", doc(stdPurposes, `{"name": "a", "users": ["root"], "roles": ["admin"]}, {"name": "b", "users": ["daemon", "root"], "roles": ["admin"]}`), `principals[1].users[1]: user "root" (uid 0) is already named at principals[0].users[0]`},
		{"group in two principals", doc(stdPurposes, `{"name": "a", "groups": ["nogroup"], "roles": ["admin"]}, {"name": "b", "groups": ["nogroup"], "roles": ["admin"]}`), `principals[1].groups[0]: group "nogroup" (gid 65534) is already named at principals[0].groups[0]`},

		{"act_as without application", doc(stdPurposes, `{"name": "a", "users": ["root"], "roles": ["admin"], "act_as": [{"participants": ["c"], "purposes": ["settlement"]}]}`), `principals[0].act_as: grants need role "application"`},
		{"act_as empty", app(``), "principals[0].act_as: must not be empty"},
		{"grant unknown field", app(`{"participants": ["c"], "purposes": ["settlement"], "window": []}`), "principals[0].act_as[0].window: unknown field"},
		{"grant unknown purpose", app(`{"participants": ["c"], "purposes": ["dispute", "setlement"]}`), `principals[0].act_as[0].purposes[1]: unknown purpose "setlement"`},
		{"grant no participants", app(`{"purposes": ["settlement"]}`), "principals[0].act_as[0].participants: required"},
		{"grant no purposes", app(`{"participants": ["c"]}`), "principals[0].act_as[0].purposes: required"},
		{"participant inner star", app(`{"participants": ["client-*-x"], "purposes": ["settlement"]}`), `principals[0].act_as[0].participants[0]: invalid participant id "client-*-x"`},
		{"participant two stars", app(`{"participants": ["client**"], "purposes": ["settlement"]}`), `principals[0].act_as[0].participants[0]: invalid participant pattern "client**"`},
		{"participant empty", app(`{"participants": ["c", ""], "purposes": ["settlement"]}`), `principals[0].act_as[0].participants[1]: invalid participant id ""`},
		{"participant duplicate", app(`{"participants": ["c", "c"], "purposes": ["settlement"]}`), `principals[0].act_as[0].participants[1]: "c" repeats`},

		{"window empty list", app(`{"participants": ["c"], "purposes": ["settlement"], "windows": []}`), "principals[0].act_as[0].windows: must not be empty; omit the field instead"},
		{"window no start", win(`{"end": "10:00"}`), "principals[0].act_as[0].windows[0].start: required"},
		{"window no end", win(`{"start": "10:00"}`), "principals[0].act_as[0].windows[0].end: required"},
		{"window bad clock", win(`{"start": "9:00", "end": "10:00"}`), `principals[0].act_as[0].windows[0].start: time "9:00" is not HH:MM`},
		{"window hour range", win(`{"start": "08:00", "end": "25:00"}`), `principals[0].act_as[0].windows[0].end: time "25:00" is out of range`},
		{"window start 24", win(`{"start": "24:00", "end": "10:00"}`), `windows[0].start: time "24:00" is out of range (00:00 to 23:59)`},
		{"window minute range", win(`{"start": "08:60", "end": "10:00"}`), `windows[0].start: time "08:60" is out of range`},
		{"window empty", win(`{"start": "08:00", "end": "08:00"}`), "principals[0].act_as[0].windows[0].end: equals start"},
		{"window bad day", win(`{"days": ["mon", "Tue"], "start": "08:00", "end": "10:00"}`), `principals[0].act_as[0].windows[0].days[1]: unknown day "Tue"`},
		{"window empty days", win(`{"days": [], "start": "08:00", "end": "10:00"}`), `windows[0].days: must not be empty`},
		{"window duplicate day", win(`{"days": ["mon", "mon"], "start": "08:00", "end": "10:00"}`), `windows[0].days[1]: "mon" repeats`},
		{"window bad zone", win(`{"start": "08:00", "end": "10:00", "time_zone": "Europe/Pariss"}`), `principals[0].act_as[0].windows[0].time_zone: unknown time zone "Europe/Pariss"`},
		{"window local zone", win(`{"start": "08:00", "end": "10:00", "time_zone": "Local"}`), `windows[0].time_zone: time zone "Local" depends on the daemon's environment`},
		{"window unknown field", win(`{"start": "08:00", "end": "10:00", "tz": "UTC"}`), `principals[0].act_as[0].windows[0].tz: unknown field`},
		{"comment not string", doc(stdPurposes, `{"name": "a", "users": ["root"], "roles": ["admin"], "comment": 1}`), "principals[0].comment: must be a string, not a number"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			p, err := Parse([]byte(tt.js))
			if err == nil {
				t.Fatalf("Parse succeeded (%s); want error containing %q", p.Summary(), tt.want)
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("errors.Is(err, ErrInvalid) = false for %v", err)
			}
			var fe *FieldError
			if !errors.As(err, &fe) {
				t.Errorf("error %v is not a *FieldError", err)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error:\n%v\nwant it to contain:\n%s", err, tt.want)
			}
		})
	}
}

// Parse reports every problem it finds, not just the first.
func TestParseReportsAllErrors(t *testing.T) {
	t.Parallel()
	js := doc(`{"name": "x", "fields": ["a b"]}`,
		`{"name": "a", "users": ["cpol-nosuchuser"], "roles": ["admn"]}, {"name": "b", "groups": ["adm"], "roles": ["application"], "act_as": [{"participants": ["c"], "purposes": ["y"]}]}`)
	_, err := Parse([]byte(js))
	if err == nil {
		t.Fatal("Parse succeeded")
	}
	for _, want := range []string{
		`purposes[0].fields[0]: invalid field name "a b"`,
		`principals[0].roles[0]: unknown role "admn"`,
		`principals[1].act_as[0].purposes[0]: unknown purpose "y"`,
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error:\n%v\nwant it to contain %q", err, want)
		}
	}
}

func TestParseErrorCap(t *testing.T) {
	t.Parallel()
	var b strings.Builder
	for i := 0; i < 30; i++ {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(`{"name": "p", "fields": ["*"]}`)
	}
	_, err := Parse([]byte(doc(b.String(), `{"name": "a", "users": ["root"], "roles": ["admin"]}`)))
	if err == nil || !strings.Contains(err.Error(), "9 more errors not shown") {
		t.Fatalf("err = %v; want 20 errors and a note of 9 more", err)
	}
}

func TestParseTooLarge(t *testing.T) {
	t.Parallel()
	big := `{"version": 1, "comment": "` + strings.Repeat("x", MaxFileSize) + `"}`
	if _, err := Parse([]byte(big)); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "more than") {
		t.Fatalf("err = %v; want a size error", err)
	}
}

func TestExamplePolicy(t *testing.T) {
	t.Parallel()
	path := filepath.Join("..", "..", "policies", "example.json")
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	p := mustParse(t, string(data))
	if got, want := p.Summary(), "2 principals (1 users, 1 groups), 2 purposes, 1 grants"; !strings.HasSuffix(got, want) {
		t.Errorf("Summary() = %q; want suffix %q", got, want)
	}
	pr, err := p.Identify(Caller{UID: 0, GID: 0, PID: 1})
	if err != nil || pr.Name != "operator" {
		t.Fatalf("Identify(root) = %+v, %v; want operator", pr, err)
	}
	for _, perm := range []Permission{PermHealth, PermParticipantsRegister, PermParticipantsRead, PermEncrypt, PermDecrypt} {
		if err := p.Authorize(pr, perm); err != nil {
			t.Errorf("Authorize(operator, %s) = %v", perm, err)
		}
	}
	d, err := p.AuthorizeDecrypt(pr, "miner-789", "settlement", nil, mustTime(t, "2024-01-01T03:00:00Z"))
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(d.Fields(), ","); got != "amount,pricing" {
		t.Errorf("settlement fields = %s", got)
	}
	if _, err := p.AuthorizeDecrypt(pr, "auditor-001", "dispute", nil, mustTime(t, "2024-01-01T03:00:00Z")); !errors.Is(err, ErrNotParticipant) {
		t.Errorf("auditor-001: err = %v; want ErrNotParticipant", err)
	}
}

func TestSummaryAndDigest(t *testing.T) {
	t.Parallel()
	js := doc(stdPurposes, `{"name": "a", "users": ["root", "daemon"], "groups": ["nogroup"], "roles": ["application"],
		"act_as": [{"participants": ["c"], "purposes": ["settlement"]}, {"participants": ["d"], "purposes": ["dispute"]}]},
		{"name": "b", "users": ["bin"], "roles": ["admin"]}`)
	p := mustParse(t, js)
	want := "policy v1 sha256:" + p.Digest()[:16] + ": 2 principals (3 users, 1 groups), 2 purposes, 2 grants"
	if got := p.Summary(); got != want {
		t.Errorf("Summary() = %q; want %q", got, want)
	}
	if len(p.Digest()) != 64 {
		t.Errorf("Digest() = %q", p.Digest())
	}
	q := mustParse(t, js+" ")
	if q.Digest() == p.Digest() {
		t.Error("different bytes, same digest")
	}
	var nilp *Policy
	if nilp.Summary() != "no policy" {
		t.Error("nil Summary")
	}
}

// The full example in docs/policy.md is valid except for the accounts it
// names, which a test machine does not have.
func TestDocExample(t *testing.T) {
	t.Parallel()
	md, err := os.ReadFile(filepath.Join("..", "..", "docs", "policy.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(md), "```json\n")
	js, _, ok2 := strings.Cut(rest, "```")
	if !ok || !ok2 {
		t.Fatal("no json block in docs/policy.md")
	}
	_, err = Parse([]byte(js))
	if err == nil {
		t.Fatal("the example names accounts this machine should not have, yet it loaded")
	}
	var n int
	for _, line := range strings.Split(err.Error(), "\n") {
		if !strings.Contains(line, `: unknown user "settled"`) && !strings.Contains(line, `: unknown group "custody-`) {
			t.Errorf("unexpected error in the doc example: %s", line)
		}
		n++
	}
	if n != 3 {
		t.Errorf("%d errors; want 3 (settled, custody-apps, custody-review):\n%v", n, err)
	}
	// With accounts that exist it loads.
	js = strings.NewReplacer(`"settled"`, `"daemon"`, `"custody-apps"`, `"nogroup"`, `"custody-review"`, `"staff"`).Replace(js)
	p := mustParse(t, js)
	if got := p.Summary(); !strings.HasSuffix(got, "3 principals (2 users, 2 groups), 3 purposes, 2 grants") {
		t.Errorf("Summary() = %s", got)
	}
}
