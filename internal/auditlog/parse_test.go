package auditlog

import (
	"bytes"
	"math"
	"reflect"
	"strings"
	"testing"
	"time"
)

// canonSamples are entries that exercise every member and the string and
// number forms the hand-written decoder must get right.
func canonSamples() []Entry {
	t0 := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	full := Entry{
		Time: t0.Add(123456789 * time.Nanosecond), Operation: "audit_decrypt",
		Caller:    Caller{UID: math.MaxUint32, GID: 0, PID: math.MinInt32, Executable: "/usr/bin/set<t>ler & co"},
		Principal: "pr\"inc\\ipal", TransactionID: "tx\n\t\r\b\f\x00\x1f", JobID: "jöb-€-😀", Participant: "\u2028\u2029",
		Participants: []string{"a", "", "c"}, KeyLabel: "custody/participant/miner-1/v1", Purpose: "settlement",
		Fields: []string{"amount"}, EndUser: EndUser{IP: "192.0.2.7", UserAgent: "app/1 (x; y)", RequestID: "r-1"},
		KeyVersion: math.MaxInt, CourtOrder: "order-1", OrderVersion: -1, DocumentHash: "sha256:abcd", UseNumber: math.MinInt,
		Outcome: Failed, Code: "purpose_denied", Detail: "bad \ufffd utf-8",
	}
	out := []Entry{
		{Time: t0, Operation: "x", Outcome: Allowed},
		{Time: t0.In(time.FixedZone("x", 3600)), Operation: "decrypt", Outcome: Denied, EndUser: EndUser{UserAgent: "u"}},
		{Time: time.Date(1, 1, 1, 0, 0, 0, 1, time.UTC), Operation: "o", Caller: Caller{PID: -1}, Outcome: Allowed, EndUser: EndUser{RequestID: "r"}},
		{Time: time.Date(9999, 12, 31, 23, 59, 59, 999999999, time.UTC), Operation: "o", Caller: Caller{PID: math.MaxInt32}, Outcome: Allowed, Fields: []string{""}},
		full,
		// A normalized entry with clipped members (Normalize).
		{Time: t0, Operation: "encrypt", TransactionID: "tx-" + strings.Repeat("\x1b[2J", 60) + "…[1048576 bytes, clipped]",
			Participants: []string{"a", "…[3 more items, clipped]"}, Outcome: Failed, Code: "invalid_id",
			Clipped: []string{"transaction_id", "participants", "end_user.user_agent"}},
	}
	for i := range 8 {
		e := full
		e.Time = t0.Add(time.Duration(i) * time.Millisecond)
		e.Participants, e.Fields = nil, []string{"amount", "pricing"}
		e.Detail, e.EndUser.IP = "", ""
		out = append(out, e)
	}
	return out
}

// checkAgainstJSON: ParseEntry (the hand-written decoder first) returns
// exactly what the encoding/json reference returns, error text included,
// and parseCanonical accepts nothing the reference rejects.
func checkAgainstJSON(t *testing.T, b []byte, index int64) {
	i1, e1, err1 := ParseEntry(b, index)
	i2, e2, err2 := parseEntryJSON(b, index)
	if (err1 == nil) != (err2 == nil) || (err1 != nil && err1.Error() != err2.Error()) {
		t.Fatalf("%q at %d: ParseEntry error %v, reference %v", b, index, err1, err2)
	}
	if i1 != i2 || !reflect.DeepEqual(e1, e2) {
		t.Fatalf("%q at %d: ParseEntry (%d, %+v), reference (%d, %+v)", b, index, i1, e1, i2, e2)
	}
	ik, ek, okKeep := parseCanonical(b, true)
	iv, _, okCheck := parseCanonical(b, false)
	if okKeep != okCheck || (okKeep && ik != iv) {
		t.Fatalf("%q: parseCanonical keep %v (%d), check-only %v (%d)", b, okKeep, ik, okCheck, iv)
	}
	if okKeep {
		ir, er, err := parseEntryJSON(b, -1)
		if err != nil || ir != ik || !reflect.DeepEqual(er, ek) {
			t.Fatalf("%q: parseCanonical accepted (%d, %+v), reference (%d, %+v, %v)", b, ik, ek, ir, er, err)
		}
	}
}

// FuzzParseCanonical: the hand-written decoder against the encoding/json
// reference (differential).
func FuzzParseCanonical(f *testing.F) {
	for i, e := range canonSamples() {
		b, err := EncodeEntry(int64(i), e)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b, int64(i))
		f.Add(b, int64(-1))
		f.Add(b, int64(i+1))
	}
	for _, s := range []string{
		`{"v":1,"i":0,"time":"2026-11-25T12:00:00Z","op":"x","caller":{"uid":0,"gid":0,"pid":0},"outcome":"allowed"}`,
		`{"v":1,"i":0,"time":"2026-11-25T12:00:00+00:00","op":"x","caller":{"uid":0,"gid":0,"pid":0},"outcome":"allowed"}`,
		`{"v":1,"i":0,"time":"2026-11-25T12:00:00.10Z","op":"x","caller":{"uid":0,"gid":0,"pid":0},"outcome":"allowed"}`,
		`{"v":1,"i":00,"time":"2026-11-25T12:00:00Z","op":"x","caller":{"uid":0,"gid":0,"pid":-0},"outcome":"allowed"}`,
		`{"v":1,"i":0,"time":"2026-11-25T12:00:00Z","op":"\u0078","caller":{"uid":0,"gid":0,"pid":0},"outcome":"allowed"}`,
		`{"v":1,"i":0,"time":"2026-11-25T12:00:00Z","op":"x","caller":{"uid":0,"gid":0,"pid":0},"end_user":{},"outcome":"allowed"}`,
		`{"v":1,"i":0,"time":"2026-11-25T12:00:00Z","op":"x","caller":{"uid":0,"gid":0,"pid":0},"fields":[],"outcome":"allowed"}`,
		`{"v":1,"i":0,"time":"2026-11-25T12:00:00Z","op":"x","caller":{"uid":0,"gid":0,"pid":0},"key_version":0,"outcome":"allowed"}`,
		`{"v":1,"i":9223372036854775807,"time":"2026-11-25T12:00:00Z","op":"x","caller":{"uid":4294967295,"gid":0,"pid":-2147483648},"outcome":"allowed"}`,
		`{"v":1,"i":9223372036854775808,"time":"2026-11-25T12:00:00Z","op":"x","caller":{"uid":4294967296,"gid":0,"pid":-2147483649},"outcome":"allowed"}`,
		`{"v":1,"i":0,"time":"2026-11-25T12:00:00Z","op":"x","caller":{"uid":0,"gid":0,"pid":0},"outcome":"allowed"} `,
		`{"v":1,"i":0,"time":"2026-11-25T12:00:00Z","op":"x","caller":{"uid":0,"gid":0,"pid":0},"outcome":"allowed","outcome":"denied"}`,
		`{"v":1,"i":0,"time":"2026-11-25T12:00:00Z","op":"x","caller":{"uid":0,"gid":0,"pid":0},"outcome":"maybe"}`,
		`{"V":1,"i":0,"time":"2026-11-25T12:00:00Z","op":"x","caller":{"uid":0,"gid":0,"pid":0},"outcome":"allowed"}`,
		`{"v":1,"i":0,"time":"0000-01-01T00:00:00Z","op":"x","caller":{"uid":0,"gid":0,"pid":0},"outcome":"allowed"}`,
		`{"v":1,"i":0,"time":"2026-11-25T12:00:00Z","op":"x","caller":{"uid":0,"gid":0,"pid":0,"exe":""},"outcome":"allowed"}`,
		`{"v":1,"i":0,"time":"2026-11-25T12:00:00Z","op":"x","caller":{"uid":0,"gid":0,"pid":0},"end_user":{"user_agent":"a","ip":"b"},"outcome":"allowed"}`,
		`{"v":1,"i":0,"time":"2026-11-25T12:00:00Z","op":"x","caller":{"uid":0,"gid":0,"pid":0},"use_number":1e2,"outcome":"allowed"}`,
		`{"v":1,"i":0,"time":"2026-11-25T12:00:00Z","op":"x","caller":{"uid":0,"gid":0,"pid":0},"outcome":"allowed","clipped":["job_id"]}`,
		`{"v":1,"i":0,"time":"2026-11-25T12:00:00Z","op":"x","caller":{"uid":0,"gid":0,"pid":0},"outcome":"allowed","clipped":[]}`,
		`{"v":1,"i":0,"time":"2026-11-25T12:00:00Z","op":"x","caller":{"uid":0,"gid":0,"pid":0},"outcome":"allowed","clipped":["nope"]}`,
		`{"v":1,"i":0,"time":"2026-11-25T12:00:00Z","op":"x","caller":{"uid":0,"gid":0,"pid":0},"outcome":"allowed","clipped":["job_id","op"]}`,
		`{"v":1,"i":0,"time":"2026-11-25T12:00:00Z","op":"x","caller":{"uid":0,"gid":0,"pid":0},"outcome":"allowed","clipped":["job_id","job_id"]}`,
		`{"v":1,"i":0,"time":"2026-11-25T12:00:00Z","op":"x","caller":{"uid":0,"gid":0,"pid":0},"outcome":"allowed","clipped":[""]}`,
		`{"v":1,"i":0,"time":"2026-11-25T12:00:00Z","op":"x","caller":{"uid":0,"gid":0,"pid":0},"outcome":"allowed","clipped":["\u006fp"]}`,
		`{"v":2}`, `{"v":1,"i":0,"i":1}`, "{}\n", ``, `"`, `{"v":1,"i":`,
	} {
		f.Add([]byte(s), int64(0))
		f.Add([]byte(s), int64(-1))
	}
	f.Fuzz(checkAgainstJSON)
}

// TestParseCanonicalAccepts: canonical entries take the fast path (a
// fall-back to encoding/json would be correct but slow), including
// escaped and non-ASCII strings.
func TestParseCanonicalAccepts(t *testing.T) {
	for i, e := range canonSamples() {
		b, err := EncodeEntry(int64(i), e)
		if err != nil {
			t.Fatal(err)
		}
		if _, _, ok := parseCanonical(b, false); !ok {
			t.Errorf("parseCanonical rejects the canonical %s", b)
		}
		checkAgainstJSON(t, b, int64(i))
		checkAgainstJSON(t, b, -1)
		// Every truncation and many one-byte changes of it (the fuzz
		// target does more).
		for j := range b {
			checkAgainstJSON(t, b[:j], int64(i))
			changes := []byte{'1', '"', 0x80}
			if i == 0 || i == 4 {
				changes = []byte{'0', '1', '9', '-', '"', '\\', ' ', 'Z', '}', ',', 0x80, 'u'}
			}
			for _, c := range changes {
				m := bytes.Clone(b)
				m[j] = c
				checkAgainstJSON(t, m, int64(i))
			}
		}
	}
	// Longer than MaxEntryBytes.
	e := Entry{Time: time.Now(), Operation: "x", Outcome: Allowed, Detail: strings.Repeat("d", MaxEntryBytes)}
	if _, err := EncodeEntry(0, e); err == nil {
		t.Fatal("EncodeEntry accepted an oversized entry")
	}
	big := []byte(`{"v":1,"i":0,"time":"2026-11-25T12:00:00Z","op":"x","caller":{"uid":0,"gid":0,"pid":0},"outcome":"allowed","detail":"` + strings.Repeat("d", MaxEntryBytes) + `"}`)
	checkAgainstJSON(t, big, 0)
}
