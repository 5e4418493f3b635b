package policy

import (
	"encoding/json"
	"errors"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"
)

func mustTime(t *testing.T, s string) time.Time {
	t.Helper()
	tm, err := time.Parse(time.RFC3339, s)
	if err != nil {
		t.Fatal(err)
	}
	return tm
}

func TestAuthorize(t *testing.T) {
	t.Parallel()
	p := mustParse(t, doc(stdPurposes, `
		{"name": "ops", "users": ["root"], "roles": ["admin"]},
		{"name": "app", "users": ["daemon"], "roles": ["application"]},
		{"name": "rev", "users": ["bin"], "roles": ["reviewer", "auditor", "officer"]}`))
	allow := map[string][]Permission{
		"ops": {PermHealth, PermParticipantsRegister, PermParticipantsRead},
		"app": {PermHealth, PermParticipantsRead, PermEncrypt, PermDecrypt},
		"rev": {PermHealth},
	}
	all := []Permission{PermHealth, PermParticipantsRegister, PermParticipantsRead, PermEncrypt, PermDecrypt}
	for name, allowed := range allow {
		for _, perm := range all {
			err := p.Authorize(Principal{Name: name}, perm)
			if slices.Contains(allowed, perm) {
				if err != nil {
					t.Errorf("Authorize(%s, %s) = %v; want nil", name, perm, err)
				}
				continue
			}
			if !errors.Is(err, ErrDenied) {
				t.Errorf("Authorize(%s, %s) = %v; want ErrDenied", name, perm, err)
			}
		}
	}
	err := p.Authorize(Principal{Name: "app"}, PermParticipantsRegister)
	if err == nil || !strings.Contains(err.Error(), "needs role admin") {
		t.Errorf("message does not name the role: %v", err)
	}
	err = p.Authorize(Principal{Name: "ops"}, PermEncrypt)
	if err == nil || !strings.Contains(err.Error(), "needs role application") {
		t.Errorf("message does not name the role: %v", err)
	}
	// Roles come from the policy, not from the Principal value.
	if err := p.Authorize(Principal{Name: "rev", Roles: []string{"admin"}}, PermParticipantsRegister); !errors.Is(err, ErrDenied) {
		t.Errorf("forged roles: err = %v; want ErrDenied", err)
	}
	if err := p.Authorize(Principal{Name: "nobody-here", Roles: []string{"admin"}}, PermHealth); !errors.Is(err, ErrDenied) {
		t.Errorf("unknown principal: err = %v; want ErrDenied", err)
	}
	if err := p.Authorize(Principal{Name: "ops"}, Permission("keys.delete")); !errors.Is(err, ErrDenied) {
		t.Errorf("unknown permission: err = %v; want ErrDenied", err)
	}
	var nilp *Policy
	if err := nilp.Authorize(Principal{Name: "ops"}, PermHealth); !errors.Is(err, ErrDenied) {
		t.Errorf("nil policy: err = %v", err)
	}
	if _, err := nilp.Identify(Caller{}); !errors.Is(err, ErrUnknownCaller) {
		t.Errorf("nil policy Identify: err = %v", err)
	}
}

// decryptPolicy has grants with and without windows for AuthorizeDecrypt tests.
const decryptPolicy = `{"version": 1,
  "purposes": [
    {"name": "settlement", "fields": ["amount", "pricing"]},
    {"name": "dispute", "fields": ["*"]},
    {"name": "reporting", "fields": ["amount"]}
  ],
  "principals": [
    {"name": "app", "users": ["root"], "roles": ["application"], "act_as": [
      {"participants": ["client-*", "miner-789"], "purposes": ["settlement", "dispute"]},
      {"participants": ["client-1"], "purposes": ["reporting"],
       "windows": [{"days": ["mon", "tue", "wed", "thu", "fri"], "start": "09:00", "end": "17:00", "time_zone": "Europe/Paris"}]}
    ]},
    {"name": "ops", "users": ["daemon"], "roles": ["admin"]}
  ]}`

func TestAuthorizeDecrypt(t *testing.T) {
	t.Parallel()
	p := mustParse(t, decryptPolicy)
	app := Principal{Name: "app"}
	monday10Paris := mustTime(t, "2024-01-15T09:00:00Z")
	saturday := mustTime(t, "2024-01-20T10:00:00Z")
	tests := []struct {
		name        string
		pr          Principal
		participant string
		purpose     string
		requested   []string
		now         time.Time
		wantErr     error
		wantFields  string
	}{
		{"purpose fields", app, "client-456", "settlement", nil, saturday, nil, "amount,pricing"},
		{"all fields", app, "client-456", "dispute", nil, saturday, nil, "*"},
		{"exact id", app, "miner-789", "settlement", nil, saturday, nil, "amount,pricing"},
		{"requested subset", app, "client-456", "settlement", []string{"pricing"}, saturday, nil, "pricing"},
		{"requested dedup and sorted", app, "client-456", "settlement", []string{"pricing", "amount", "pricing"}, saturday, nil, "amount,pricing"},
		{"requested from all", app, "client-456", "dispute", []string{"settlement_details"}, saturday, nil, "settlement_details"},
		{"in window", app, "client-1", "reporting", nil, monday10Paris, nil, "amount"},

		{"not application", Principal{Name: "ops"}, "client-456", "settlement", nil, saturday, ErrDenied, ""},
		{"unknown principal", Principal{Name: "ghost", Roles: []string{"application"}}, "client-456", "settlement", nil, saturday, ErrDenied, ""},
		{"other participant", app, "miner-1", "settlement", nil, saturday, ErrNotParticipant, ""},
		{"exact id is not a prefix", app, "miner-7890", "settlement", nil, saturday, ErrNotParticipant, ""},
		{"empty participant", app, "", "settlement", nil, saturday, ErrNotParticipant, ""},
		{"invalid participant", app, "client-1/../x", "settlement", nil, saturday, ErrNotParticipant, ""},
		{"unknown purpose", app, "client-456", "setlement", nil, saturday, ErrPurpose, ""},
		{"purpose not granted for participant", app, "client-2", "reporting", nil, monday10Paris, ErrPurpose, ""},
		{"purpose not granted for exact id", app, "miner-789", "reporting", nil, monday10Paris, ErrPurpose, ""},
		{"outside window", app, "client-1", "reporting", nil, saturday, ErrOutsideWindow, ""},
		{"field denied", app, "client-456", "settlement", []string{"amount", "settlement_details"}, saturday, ErrFieldDenied, ""},
		{"star is not a field name", app, "client-456", "dispute", []string{"*"}, saturday, ErrFieldDenied, ""},
		{"empty field name", app, "client-456", "dispute", []string{""}, saturday, ErrFieldDenied, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, err := p.AuthorizeDecrypt(tt.pr, tt.participant, tt.purpose, tt.requested, tt.now)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) || !errors.Is(err, ErrDenied) {
					t.Fatalf("err = %v; want %v (and ErrDenied)", err, tt.wantErr)
				}
				if got := d.Fields(); len(got) != 0 {
					t.Errorf("denied, yet Fields() = %v", got)
				}
				return
			}
			if err != nil {
				t.Fatalf("err = %v", err)
			}
			if got := strings.Join(d.Fields(), ","); got != tt.wantFields {
				t.Errorf("Fields() = %s; want %s", got, tt.wantFields)
			}
		})
	}
	// The specific errors are distinct from one another.
	specific := []error{ErrNotParticipant, ErrPurpose, ErrOutsideWindow, ErrFieldDenied}
	for i, a := range specific {
		for j, b := range specific {
			if (i == j) != errors.Is(a, b) {
				t.Errorf("errors.Is(%v, %v) = %v", a, b, errors.Is(a, b))
			}
		}
		if errors.Is(a, ErrUnknownCaller) || errors.Is(ErrDenied, a) {
			t.Errorf("%v is wrongly related", a)
		}
	}
}

func TestWindows(t *testing.T) {
	t.Parallel()
	pol := func(windows string) *Policy {
		return mustParse(t, doc(stdPurposes, `{"name": "app", "users": ["root"], "roles": ["application"], "act_as": [
			{"participants": ["c"], "purposes": ["settlement"], "windows": [`+windows+`]}]}`))
	}
	tests := []struct {
		name    string
		windows string
		open    []string // RFC 3339 instants inside
		closed  []string // and outside
	}{
		{
			"office hours Paris (UTC+1 in winter, +2 in summer)",
			`{"days": ["mon", "tue", "wed", "thu", "fri"], "start": "09:00", "end": "17:00", "time_zone": "Europe/Paris"}`,
			[]string{"2024-01-15T08:00:00Z", "2024-01-15T15:59:59Z", "2024-07-15T07:00:00Z", "2024-01-19T12:00:00+01:00"},
			[]string{"2024-01-15T07:59:59Z", "2024-01-15T16:00:00Z", "2024-07-15T15:00:00Z", "2024-01-20T12:00:00Z", "2024-01-14T12:00:00Z"},
		},
		{
			"default zone is UTC",
			`{"start": "09:00", "end": "17:00"}`,
			[]string{"2024-01-15T09:00:00Z", "2024-01-20T16:59:00Z", "2024-01-15T10:00:00+01:00"},
			[]string{"2024-01-15T08:59:00Z", "2024-01-15T17:00:00Z", "2024-01-15T09:30:00+01:00"},
		},
		{
			"day judged in the window's zone: Monday in Auckland is Sunday in UTC",
			`{"days": ["mon"], "start": "00:00", "end": "24:00", "time_zone": "Pacific/Auckland"}`,
			[]string{"2024-01-14T11:00:00Z", "2024-01-14T19:00:00Z", "2024-01-15T09:00:00Z", "2024-01-15T10:59:59Z"},
			[]string{"2024-01-14T10:59:59Z", "2024-01-15T11:00:00Z", "2024-01-13T19:00:00Z" /* Sun 08:00 in Auckland, Sat in UTC */},
		},
		{
			"crossing midnight belongs to the start day",
			`{"days": ["fri"], "start": "22:00", "end": "02:00", "time_zone": "America/New_York"}`,
			[]string{"2024-01-19T22:00:00-05:00", "2024-01-19T23:59:00-05:00", "2024-01-20T00:00:00-05:00", "2024-01-20T01:59:00-05:00"},
			[]string{"2024-01-19T21:59:00-05:00", "2024-01-20T02:00:00-05:00", "2024-01-19T01:00:00-05:00", "2024-01-20T22:30:00-05:00", "2024-01-18T23:00:00-05:00"},
		},
		{
			"crossing midnight, Sunday into Monday",
			`{"days": ["sun"], "start": "23:00", "end": "01:00"}`,
			[]string{"2024-01-14T23:30:00Z", "2024-01-15T00:30:00Z"},
			[]string{"2024-01-15T23:30:00Z", "2024-01-14T00:30:00Z", "2024-01-15T01:00:00Z"},
		},
		{
			"any of several windows",
			`{"days": ["sat"], "start": "10:00", "end": "12:00"}, {"days": ["sun"], "start": "14:00", "end": "16:00"}`,
			[]string{"2024-01-20T11:00:00Z", "2024-01-21T15:00:00Z"},
			[]string{"2024-01-20T15:00:00Z", "2024-01-21T11:00:00Z"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := pol(tt.windows)
			for _, s := range tt.open {
				if _, err := p.AuthorizeDecrypt(Principal{Name: "app"}, "c", "settlement", nil, mustTime(t, s)); err != nil {
					t.Errorf("%s: err = %v; want open", s, err)
				}
			}
			for _, s := range tt.closed {
				if _, err := p.AuthorizeDecrypt(Principal{Name: "app"}, "c", "settlement", nil, mustTime(t, s)); !errors.Is(err, ErrOutsideWindow) {
					t.Errorf("%s: err = %v; want ErrOutsideWindow", s, err)
				}
			}
		})
	}
}

// A grant without windows beside a windowed one for the same participant and
// purpose makes the pair always open.
func TestWindowsUnionOfGrants(t *testing.T) {
	t.Parallel()
	p := mustParse(t, doc(stdPurposes, `{"name": "app", "users": ["root"], "roles": ["application"], "act_as": [
		{"participants": ["c"], "purposes": ["settlement"], "windows": [{"start": "09:00", "end": "10:00"}]},
		{"participants": ["c*"], "purposes": ["settlement"]}]}`))
	if _, err := p.AuthorizeDecrypt(Principal{Name: "app"}, "c", "settlement", nil, mustTime(t, "2024-01-15T20:00:00Z")); err != nil {
		t.Fatalf("err = %v", err)
	}
}

func TestFilter(t *testing.T) {
	t.Parallel()
	p := mustParse(t, decryptPolicy)
	fields := map[string]json.RawMessage{
		"amount":             json.RawMessage(`"1000"`),
		"settlement_details": json.RawMessage(`{"iban":"x"}`),
	}
	now := mustTime(t, "2024-01-20T10:00:00Z")
	for _, tt := range []struct {
		purpose   string
		requested []string
		want      []string
	}{
		{"settlement", nil, []string{"amount"}}, // pricing visible but absent
		{"settlement", []string{"pricing"}, nil},
		{"dispute", nil, []string{"amount", "settlement_details"}},
		{"dispute", []string{"settlement_details"}, []string{"settlement_details"}},
	} {
		d, err := p.AuthorizeDecrypt(Principal{Name: "app"}, "client-9", tt.purpose, tt.requested, now)
		if err != nil {
			t.Fatal(err)
		}
		got := d.Filter(fields)
		if keys := slices.Sorted(maps.Keys(got)); !slices.Equal(keys, tt.want) {
			t.Errorf("%s %v: Filter keys = %v; want %v", tt.purpose, tt.requested, keys, tt.want)
		}
		for k, v := range got {
			if string(v) != string(fields[k]) {
				t.Errorf("%s: value changed", k)
			}
		}
		got["injected"] = nil
		if _, ok := fields["injected"]; ok {
			t.Fatal("Filter returned the input map")
		}
	}
	var zero Disclosure
	if got := zero.Filter(fields); got == nil || len(got) != 0 {
		t.Errorf("zero Disclosure Filter = %v; want empty", got)
	}
	if got := zero.Fields(); len(got) != 0 {
		t.Errorf("zero Disclosure Fields = %v", got)
	}
	if got := zero.Filter(nil); got == nil {
		t.Error("Filter(nil) = nil")
	}
	d, _ := p.AuthorizeDecrypt(Principal{Name: "app"}, "client-9", "settlement", nil, now)
	f := d.Fields()
	f[0] = "settlement_details"
	if got := d.Filter(fields); len(got) != 1 || got["amount"] == nil {
		t.Errorf("mutating Fields() changed the Disclosure: %v", got)
	}
}
