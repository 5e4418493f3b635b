package auditlog_test

import (
	"bytes"
	"context"
	"errors"
	"reflect"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"

	"custody/internal/auditlog"
)

func TestNormalize(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("x", 1<<20)
	e := entry(0)
	e.TransactionID = long
	e.EndUser.UserAgent = strings.Repeat("é", 200) // 400 bytes: cut on a rune boundary
	e.Caller.Executable = "/opt/app/\xff" + strings.Repeat("p", 1100)
	e.Participants = make([]string, 1000)
	for i := range e.Participants {
		e.Participants[i] = "miner-1"
	}
	e.Fields = []string{"amount", strings.Repeat("f", 300)}
	e.Clipped = []string{"not-a-member", "detail"} // a name that is no member is dropped; a member's stays (idempotence)
	n := auditlog.Normalize(e)

	if want := []string{"caller.exe", "transaction_id", "participants", "fields", "end_user.user_agent", "detail"}; !slices.Equal(n.Clipped, want) {
		t.Errorf("clipped %v, want %v", n.Clipped, want)
	}
	if len(n.TransactionID) > auditlog.MaxStringBytes || !strings.HasSuffix(n.TransactionID, "…[1048576 bytes, clipped]") || !strings.HasPrefix(n.TransactionID, "xxxx") {
		t.Errorf("transaction_id %q", n.TransactionID)
	}
	if len(n.EndUser.UserAgent) > auditlog.MaxStringBytes || !utf8.ValidString(n.EndUser.UserAgent) || !strings.HasSuffix(n.EndUser.UserAgent, "…[400 bytes, clipped]") {
		t.Errorf("user agent %q", n.EndUser.UserAgent)
	}
	if len(n.Caller.Executable) > auditlog.MaxExeBytes || !strings.HasPrefix(n.Caller.Executable, "/opt/app/\uFFFDppp") {
		t.Errorf("exe %q", n.Caller.Executable)
	}
	if len(n.Participants) > auditlog.MaxListItems || n.Participants[0] != "miner-1" || !strings.HasPrefix(n.Participants[len(n.Participants)-1], "…[") ||
		!strings.HasSuffix(n.Participants[len(n.Participants)-1], " more items, clipped]") {
		t.Errorf("participants: %d, last %q", len(n.Participants), n.Participants[len(n.Participants)-1])
	}
	if n.Fields[0] != "amount" || len(n.Fields[1]) > auditlog.MaxStringBytes || len(n.Fields) != 2 {
		t.Errorf("fields %q", n.Fields)
	}
	if e.Participants[len(e.Participants)-1] != "miner-1" || len(e.Fields[1]) != 300 {
		t.Error("Normalize changed its argument's lists")
	}
	// Idempotent.
	if again := auditlog.Normalize(n); !reflect.DeepEqual(again, n) {
		t.Errorf("Normalize(Normalize(e)) differs:\n%+v\n%+v", again, n)
	}
	// Entries within the limits are unchanged.
	if ok := entry(3); !reflect.DeepEqual(auditlog.Normalize(ok), ok) {
		t.Errorf("Normalize changed an entry within its limits: %+v", auditlog.Normalize(ok))
	}
	if _, err := auditlog.EncodeEntry(0, n); err != nil {
		t.Fatal(err)
	}
}

// TestNormalizeAllocs: the record path normalizes every entry twice; an
// entry within its limits costs no allocation. (Not parallel:
// AllocsPerRun.)
func TestNormalizeAllocs(t *testing.T) {
	ok := entry(3)
	ok.Clipped = []string{"participant", "purpose"}
	if a := testing.AllocsPerRun(100, func() { auditlog.Normalize(ok) }); a != 0 {
		t.Errorf("Normalize of an entry within its limits: %v allocations, want 0", a)
	}
}

// TestNormalizeNamesEachMember: cutting one member names that member, and
// only it, in Clipped.
func TestNormalizeNamesEachMember(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("y", 10<<10)
	for name, set := range map[string]func(*auditlog.Entry){
		"op": func(e *auditlog.Entry) { e.Operation = long }, "caller.exe": func(e *auditlog.Entry) { e.Caller.Executable = long },
		"principal": func(e *auditlog.Entry) { e.Principal = long }, "transaction_id": func(e *auditlog.Entry) { e.TransactionID = long },
		"job_id": func(e *auditlog.Entry) { e.JobID = long }, "participant": func(e *auditlog.Entry) { e.Participant = long },
		"participants": func(e *auditlog.Entry) { e.Participants = []string{long} }, "sealed_by": func(e *auditlog.Entry) { e.SealedBy = long },
		"key": func(e *auditlog.Entry) { e.KeyLabel = long }, "purpose": func(e *auditlog.Entry) { e.Purpose = long },
		"fields": func(e *auditlog.Entry) { e.Fields = []string{long} }, "end_user.ip": func(e *auditlog.Entry) { e.EndUser.IP = long },
		"end_user.user_agent": func(e *auditlog.Entry) { e.EndUser.UserAgent = long },
		"end_user.request_id": func(e *auditlog.Entry) { e.EndUser.RequestID = long },
		"court_order":         func(e *auditlog.Entry) { e.CourtOrder = long }, "document_hash": func(e *auditlog.Entry) { e.DocumentHash = long },
		"code": func(e *auditlog.Entry) { e.Code = long }, "detail": func(e *auditlog.Entry) { e.Detail = long },
	} {
		e := entry(1)
		set(&e)
		if got := auditlog.Normalize(e).Clipped; !slices.Equal(got, []string{name}) {
			t.Errorf("%s cut: clipped %v", name, got)
		}
	}
}

// TestNormalizeBound: a normalized entry always encodes within
// MaxEntryBytes, even with every member at its limit and every byte one
// that JSON escapes to six bytes.
func TestNormalizeBound(t *testing.T) {
	t.Parallel()
	worst := strings.Repeat("\x01", 1<<16)
	e := entry(0)
	for _, p := range []*string{&e.Operation, &e.Caller.Executable, &e.Principal, &e.TransactionID, &e.JobID, &e.Participant,
		&e.KeyLabel, &e.Purpose, &e.EndUser.IP, &e.EndUser.UserAgent, &e.EndUser.RequestID, &e.CourtOrder, &e.DocumentHash, &e.Code, &e.Detail} {
		*p = worst
	}
	e.Participants, e.Fields = make([]string, 5000), make([]string, 5000)
	for i := range e.Participants {
		e.Participants[i], e.Fields[i] = worst[:40], worst[:40]
	}
	b, err := auditlog.EncodeEntry(0, auditlog.Normalize(e))
	if err != nil {
		t.Fatal(err)
	}
	// Many empty items: the item count is bounded too.
	e.Participants, e.Fields = make([]string, 100000), make([]string, 100000)
	b2, err := auditlog.EncodeEntry(0, auditlog.Normalize(e))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("worst normalized entries: %d and %d bytes (limit %d)", len(b), len(b2), auditlog.MaxEntryBytes)
}

// TestOversizeEntryRecorded: an entry that would be larger than
// MaxEntryBytes is recorded, clipped and marked, instead of refused: a
// probe with huge strings leaves its trace.
func TestOversizeEntryRecorded(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cfg := testConfig(dir)
	l := openLog(t, cfg)
	e := entry(1)
	e.Fields = []string{strings.Repeat("x", auditlog.MaxEntryBytes)}
	e.TransactionID = strings.Repeat("\x1b[2J", auditlog.MaxEntryBytes)
	i, err := l.Append(context.Background(), e)
	if err != nil {
		t.Fatalf("oversize entry: %v", err)
	}
	es, err := l.Entries(i, i+1)
	if err != nil {
		t.Fatal(err)
	}
	_, got, err := auditlog.ParseEntry(es[0].Data, i)
	if err != nil || !slices.Equal(got.Clipped, []string{"transaction_id", "fields"}) || !strings.HasSuffix(got.TransactionID, "bytes, clipped]") {
		t.Fatalf("recorded %+v, %v", got, err)
	}
	if !bytes.Contains(es[0].Data, []byte(`\u001b[2J`)) {
		t.Errorf("escape sequence not kept (escaped) in the entry: %.200s", es[0].Data)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if res, err := auditlog.Verify(dir, auditlog.VerifyOptions{Verifier: testVerifier(t)}); err != nil || !res.OK {
		t.Fatalf("verify: %+v %v", res, err)
	}
}

// TestClippedStrict: the parser accepts only clippable names, each once,
// in member order, in clipped.
func TestClippedStrict(t *testing.T) {
	t.Parallel()
	const head = `{"v":1,"i":0,"time":"2026-11-25T12:00:00Z","op":"x","caller":{"uid":0,"gid":0,"pid":0},"outcome":"allowed"`
	for _, c := range []struct {
		clipped string
		ok      bool
	}{
		{`["transaction_id","end_user.user_agent"]`, true},
		{`["detail"]`, true},
		{`["nope"]`, false},
		{`["end_user.user_agent","transaction_id"]`, false},
		{`["job_id","job_id"]`, false},
		{`[""]`, false},
		{`[]`, false},
	} {
		_, _, err := auditlog.ParseEntry([]byte(head+`,"clipped":`+c.clipped+`}`), 0)
		if (err == nil) != c.ok || err != nil && !errors.Is(err, auditlog.ErrMalformed) {
			t.Errorf("clipped %s: %v", c.clipped, err)
		}
	}
}

// FuzzNormalize: whatever the strings, a normalized entry is a fixed
// point, encodes within MaxEntryBytes, and parses back to itself.
func FuzzNormalize(f *testing.F) {
	f.Add("tx-1", "agent", "/usr/bin/x", "miner-1", 3)
	f.Add(strings.Repeat("\x1b", 300), "\xff\xfe", strings.Repeat("é", 700), "", 300)
	f.Add("=cmd|' /C calc'!A0", "\u202eevil", "\r\n", strings.Repeat("a", 257), 0)
	f.Fuzz(func(t *testing.T, tx, ua, exe, item string, n int) {
		e := entry(0)
		e.TransactionID, e.EndUser.UserAgent, e.Caller.Executable = tx, ua, exe
		n = min(max(n, 0), 2000)
		for range n {
			e.Participants = append(e.Participants, item)
		}
		e = auditlog.Normalize(e)
		if again := auditlog.Normalize(e); !reflect.DeepEqual(again, e) {
			t.Fatalf("not a fixed point: %+v", e)
		}
		b, err := auditlog.EncodeEntry(7, e)
		if err != nil {
			t.Fatal(err)
		}
		_, got, err := auditlog.ParseEntry(b, 7)
		if err != nil {
			t.Fatal(err)
		}
		got.Time = e.Time
		if !reflect.DeepEqual(got, e) {
			t.Fatalf("parsed %+v, want %+v", got, e)
		}
	})
}
