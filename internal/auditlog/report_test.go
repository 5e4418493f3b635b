package auditlog_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"custody/internal/auditlog"
)

// reportHostile is what an application puts in a string it controls to
// attack whoever reads a report: terminal escapes, a forged line, markup.
const reportHostile = "\x1b[2J\r\n<b>x</b>&\u202e\\"

// reportLog writes the log the Summarize tests count, and returns its
// directory. Entry i of the list is log index i; times are relative to
// t0 (2026-11-25T12:00:00Z).
func reportLog(t *testing.T) string {
	t.Helper()
	const m, s = time.Minute, time.Second
	type E = auditlog.Entry
	A, D, F := auditlog.Allowed, auditlog.Denied, auditlog.Failed
	dec := func(at time.Duration, principal string, uid uint32, purpose string, o auditlog.Outcome, code string) E {
		return E{Time: t0.Add(at), Operation: "decrypt", Principal: principal, Caller: auditlog.Caller{UID: uid, PID: 7},
			Purpose: purpose, Outcome: o, Code: code}
	}
	audit := func(at time.Duration, order string, o auditlog.Outcome, code string) E {
		e := dec(at, "auditor-1", 1003, "", o, code)
		e.Operation, e.CourtOrder, e.OrderVersion, e.UseNumber = "audit_decrypt", order, 1, 1
		return e
	}
	es := []E{
		dec(-time.Hour, "settlement-app", 1001, "settlement", A, ""), // 0: before the window
		dec(0, "settlement-app", 1001, "settlement", A, ""),          // 1
		dec(1*m, "settlement-app", 1001, "settlement", D, "purpose_denied"),
		dec(2*m, "dispute-desk", 1002, "dispute", F, "hsm_error"),
		audit(3*m, "order-A", A, ""), // 4
		audit(4*m, "order-A", D, "order_exhausted"),
		audit(5*m, "order-B", F, "vault_unavailable"),
	}
	for k := range 6 { // 7–12: a burst, 6 denials in 50 s
		es = append(es, dec(10*m+time.Duration(k)*10*s, "intruder", 1004, "dispute", D, []string{"not_participant", "purpose_denied"}[k%2]))
	}
	for k := range 4 { // 13–16: 4 denials of a caller without a principal: no burst
		es = append(es, dec(20*m+time.Duration(k)*10*s, "", 4242, "", D, "unknown_caller"))
	}
	// 17: a principal named like that caller is another caller.
	es = append(es, dec(20*m+45*s, "uid 4242", 1005, "", D, "unknown_caller"))
	for k := range 5 { // 18–22: 5 denials within exactly BurstWindow: a burst
		es = append(es, dec(30*m+time.Duration(k)*15*s, "", 4343, "", D, "unknown_caller"))
	}
	es = append(es,
		dec(40*m, "settlement-app", 1001, strings.Repeat("p", 300), D, "invalid_id"), // 23: clipped when recorded
		dec(41*m, "settlement-app", 1001, reportHostile, D, "invalid_id"),
		dec(42*m, "settlement-app", 1001, "(none)", D, "purpose_denied"),
		E{Time: t0.Add(43 * m), Operation: "start", Outcome: A, Detail: "started"}, // 26: a daemon event
		dec(24*time.Hour, "dispute-desk", 1002, "dispute", A, ""),
		dec(25*time.Hour, "dispute-desk", 1002, "dispute", A, ""), // 28: at the window's end, excluded
	)
	dir := t.TempDir()
	l := openLog(t, testConfig(dir))
	for i, e := range es {
		if n, err := l.Append(context.Background(), e); err != nil || n != int64(i) {
			t.Fatalf("entry %d: index %d, %v", i, n, err)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestSummarize counts a log of known entries in several windows and
// checks every number of the Summary.
func TestSummarize(t *testing.T) {
	dir := reportLog(t)
	clipped := auditlog.ClipString(strings.Repeat("p", 300), auditlog.MaxStringBytes)
	if !strings.HasSuffix(clipped, "…[300 bytes, clipped]") {
		t.Fatalf("clipped purpose %q", clipped)
	}
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	type T = auditlog.Tally
	intruderBurst := auditlog.Burst{Principal: "intruder", Start: at(10 * time.Minute), End: at(10*time.Minute + 50*time.Second),
		Count: 6, FirstIndex: 7, Codes: []string{"not_participant", "purpose_denied"}}
	uidBurst := auditlog.Burst{UID: 4343, Start: at(30 * time.Minute), End: at(31 * time.Minute),
		Count: 5, FirstIndex: 18, Codes: []string{"unknown_caller"}}
	day, next := "2026-11-25", "2026-11-26"
	for _, tc := range []struct {
		name string
		opts auditlog.SummaryOptions
		want auditlog.Summary
	}{
		{"window", auditlog.SummaryOptions{From: t0, To: at(25 * time.Hour)}, auditlog.Summary{
			Entries: 27, Denied: 21, Failed: 2, Audits: 3,
			Days: []T{{day, 3, 21, 2}, {next, 1, 0, 0}},
			// Ties (one entry each) in byte order of the raw key: \x1b, '(', 'p'.
			Purposes: []T{{"", 2, 11, 1}, {"dispute", 1, 6, 1}, {"settlement", 1, 1, 0},
				{reportHostile, 0, 1, 0}, {"(none)", 0, 1, 0}, {clipped, 0, 1, 0}},
			Principals: []T{{"", 1, 9, 0}, {"intruder", 0, 6, 0}, {"settlement-app", 1, 4, 0}, {"auditor-1", 1, 1, 1},
				{"dispute-desk", 1, 0, 1}, {"uid 4242", 0, 1, 0}},
			Orders: []T{{"order-A", 1, 1, 0}, {"order-B", 0, 0, 1}},
			Bursts: []auditlog.Burst{intruderBurst, uidBurst},
		}},
		{"open bounds", auditlog.SummaryOptions{}, auditlog.Summary{
			Entries: 29, Denied: 21, Failed: 2, Audits: 3,
			Days: []T{{day, 4, 21, 2}, {next, 2, 0, 0}},
			Purposes: []T{{"", 2, 11, 1}, {"dispute", 2, 6, 1}, {"settlement", 2, 1, 0},
				{reportHostile, 0, 1, 0}, {"(none)", 0, 1, 0}, {clipped, 0, 1, 0}},
			Principals: []T{{"", 1, 9, 0}, {"intruder", 0, 6, 0}, {"settlement-app", 2, 4, 0}, {"auditor-1", 1, 1, 1},
				{"dispute-desk", 2, 0, 1}, {"uid 4242", 0, 1, 0}},
			Orders: []T{{"order-A", 1, 1, 0}, {"order-B", 0, 0, 1}},
			Bursts: []auditlog.Burst{intruderBurst, uidBurst},
		}},
		// From is inclusive (entry 13), To exclusive (entry 22): uid 4343
		// keeps 4 denials, no longer a burst.
		{"edges", auditlog.SummaryOptions{From: at(20 * time.Minute), To: at(31 * time.Minute)}, auditlog.Summary{
			Entries: 9, Denied: 9,
			Days:       []T{{day, 0, 9, 0}},
			Purposes:   []T{{"", 0, 9, 0}},
			Principals: []T{{"", 0, 8, 0}, {"uid 4242", 0, 1, 0}},
		}},
		{"match", auditlog.SummaryOptions{From: t0, To: at(25 * time.Hour), Match: func(e auditlog.Entry) bool { return e.Principal == "intruder" }},
			auditlog.Summary{
				Entries: 6, Denied: 6,
				Days:       []T{{day, 0, 6, 0}},
				Purposes:   []T{{"dispute", 0, 6, 0}},
				Principals: []T{{"intruder", 0, 6, 0}},
				Bursts:     []auditlog.Burst{intruderBurst},
			}},
		{"empty window", auditlog.SummaryOptions{From: at(100 * time.Hour), To: at(101 * time.Hour)}, auditlog.Summary{}},
		{"match nothing", auditlog.SummaryOptions{Match: func(auditlog.Entry) bool { return false }}, auditlog.Summary{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := auditlog.Summarize(dir, tc.opts)
			if err != nil {
				t.Fatal(err)
			}
			tc.want.From, tc.want.To = tc.opts.From, tc.opts.To
			if d := summaryDiff(got, &tc.want); d != "" {
				t.Error(d)
			}
		})
	}
}

// summaryDiff describes how got differs from want ("" when it does not);
// a nil list equals an empty one.
func summaryDiff(got, want *auditlog.Summary) string {
	var d []string
	if !got.From.Equal(want.From) || !got.To.Equal(want.To) {
		d = append(d, fmt.Sprintf("window %v–%v, want %v–%v", got.From, got.To, want.From, want.To))
	}
	if g, w := [4]int{got.Entries, got.Denied, got.Failed, got.Audits}, [4]int{want.Entries, want.Denied, want.Failed, want.Audits}; g != w {
		d = append(d, fmt.Sprintf("entries, denied, failed, audits %v, want %v", g, w))
	}
	for _, l := range []struct {
		name      string
		got, want []auditlog.Tally
	}{{"days", got.Days, want.Days}, {"purposes", got.Purposes, want.Purposes},
		{"principals", got.Principals, want.Principals}, {"orders", got.Orders, want.Orders}} {
		if !slices.Equal(l.got, l.want) {
			d = append(d, fmt.Sprintf("%s:\n  got  %s\n  want %s", l.name, tallies(l.got), tallies(l.want)))
		}
	}
	sameBurst := func(a, b auditlog.Burst) bool {
		return a.Principal == b.Principal && a.UID == b.UID && a.Start.Equal(b.Start) && a.End.Equal(b.End) &&
			a.Count == b.Count && a.FirstIndex == b.FirstIndex && slices.Equal(a.Codes, b.Codes)
	}
	if !slices.EqualFunc(got.Bursts, want.Bursts, sameBurst) {
		d = append(d, fmt.Sprintf("bursts:\n  got  %q\n  want %q", fmt.Sprintf("%+v", got.Bursts), fmt.Sprintf("%+v", want.Bursts)))
	}
	return strings.Join(d, "\n")
}

// tallies prints ts with their keys quoted (they may be hostile).
func tallies(ts []auditlog.Tally) string {
	var b strings.Builder
	for _, t := range ts {
		fmt.Fprintf(&b, "{%q %d %d %d} ", t.Key, t.Allowed, t.Denied, t.Failed)
	}
	return b.String()
}

// TestSummarizeBurstWindow: denials one caller spread over just more than
// BurstWindow are no burst; within it, they are (the rule's boundaries).
func TestSummarizeBurstWindow(t *testing.T) {
	for _, tc := range []struct {
		name   string
		n      int
		spread time.Duration // between the first and the last denial
		bursts int
	}{
		{"BurstDenials within the window", auditlog.BurstDenials, auditlog.BurstWindow, 1},
		{"BurstDenials over a longer span", auditlog.BurstDenials, auditlog.BurstWindow + time.Second, 0},
		{"one denial fewer", auditlog.BurstDenials - 1, time.Second, 0},
		{"two bursts back to back", 2 * auditlog.BurstDenials, time.Second, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			l := openLog(t, testConfig(dir))
			for k := range tc.n {
				at := t0.Add(tc.spread * time.Duration(k%auditlog.BurstDenials) / time.Duration(auditlog.BurstDenials-1))
				if k >= auditlog.BurstDenials {
					at = at.Add(2 * auditlog.BurstWindow)
				}
				e := auditlog.Entry{Time: at, Operation: "decrypt", Principal: "intruder", Outcome: auditlog.Denied, Code: "not_participant"}
				if err := l.Record(context.Background(), e); err != nil {
					t.Fatal(err)
				}
			}
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
			s, err := auditlog.Summarize(dir, auditlog.SummaryOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if len(s.Bursts) != tc.bursts || s.Denied != tc.n {
				t.Fatalf("%d denials, bursts %+v; want %d denials, %d bursts", s.Denied, s.Bursts, tc.n, tc.bursts)
			}
			for _, b := range s.Bursts {
				if b.Count != auditlog.BurstDenials || b.End.Sub(b.Start) != tc.spread {
					t.Errorf("burst %+v", b)
				}
			}
		})
	}
}

// TestSummarizeMalformed: an altered entry fails the summary (ErrMalformed,
// with its index) instead of being skipped or half counted; a missing log
// is an error too.
func TestSummarizeMalformed(t *testing.T) {
	dir := t.TempDir()
	writeLog(t, testConfig(dir), 10)
	path := filepath.Join(dir, auditlog.EntriesFile)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.SplitAfter(string(b), "\n")
	lines[4] = strings.Replace(lines[4], `"outcome":"allowed"`, `"outcome":"maybe"`, 1)
	if err := os.WriteFile(path, []byte(strings.Join(lines, "")), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := auditlog.Summarize(dir, auditlog.SummaryOptions{}); !errors.Is(err, auditlog.ErrMalformed) || !strings.Contains(err.Error(), "entry 4") {
		t.Fatalf("Summarize of a log with a malformed entry 4: %v", err)
	}
	if _, err := auditlog.Summarize(filepath.Join(dir, "absent"), auditlog.SummaryOptions{}); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Summarize of a missing log: %v", err)
	}
}

// TestSummarizeLogs: two logs (two daemons of a fleet) counted together.
// A caller's denials are taken in time order across the logs: three on one
// daemon and two on the other within a minute are one burst, which neither
// log holds alone; Logs counts each log's selected entries.
func TestSummarizeLogs(t *testing.T) {
	const s = time.Second
	write := func(es ...auditlog.Entry) string {
		dir := t.TempDir()
		l := openLog(t, testConfig(dir))
		for _, e := range es {
			if _, err := l.Append(context.Background(), e); err != nil {
				t.Fatal(err)
			}
		}
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		return dir
	}
	deny := func(at time.Duration) auditlog.Entry {
		return auditlog.Entry{Time: t0.Add(at), Operation: "decrypt", Principal: "intruder", Caller: auditlog.Caller{UID: 1004, PID: 7},
			Purpose: "dispute", Outcome: auditlog.Denied, Code: "not_participant"}
	}
	allow := auditlog.Entry{Time: t0, Operation: "decrypt", Principal: "settlement-app", Caller: auditlog.Caller{UID: 1001, PID: 7},
		Purpose: "settlement", Outcome: auditlog.Allowed}
	a := write(allow, deny(0), deny(20*s), deny(40*s))
	b := write(deny(10*s), deny(30*s))
	for _, one := range []string{a, b} {
		sum, err := auditlog.Summarize(one, auditlog.SummaryOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if len(sum.Bursts) != 0 {
			t.Fatalf("one log alone: bursts %+v", sum.Bursts)
		}
	}
	sum, err := auditlog.SummarizeLogs([]string{a, b}, auditlog.SummaryOptions{})
	if err != nil {
		t.Fatal(err)
	}
	want := auditlog.Summary{Entries: 6, Denied: 5,
		Days:       []auditlog.Tally{{"2026-11-25", 1, 5, 0}},
		Purposes:   []auditlog.Tally{{"dispute", 0, 5, 0}, {"settlement", 1, 0, 0}},
		Principals: []auditlog.Tally{{"intruder", 0, 5, 0}, {"settlement-app", 1, 0, 0}},
		Bursts: []auditlog.Burst{{Principal: "intruder", Start: t0, End: t0.Add(40 * s), Count: 5, FirstIndex: 1,
			Codes: []string{"not_participant"}}},
	}
	if d := summaryDiff(sum, &want); d != "" {
		t.Error(d)
	}
	if !slices.Equal(sum.Logs, []int{4, 2}) || sum.Bursts[0].Log != 0 {
		t.Errorf("logs %v, burst's first denial in log %d; want [4 2], log 0", sum.Logs, sum.Bursts[0].Log)
	}
	// The second log's first denial starts the run when it is the earliest.
	sum, err = auditlog.SummarizeLogs([]string{a, write(deny(-10*s), deny(30*s))}, auditlog.SummaryOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(sum.Bursts) != 1 || sum.Bursts[0].Log != 1 || sum.Bursts[0].FirstIndex != 0 || sum.Bursts[0].Count != 5 {
		t.Errorf("bursts %+v, want one of 5 from log 1's entry 0", sum.Bursts)
	}
	if _, err := auditlog.SummarizeLogs([]string{a, filepath.Join(b, "absent")}, auditlog.SummaryOptions{}); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a missing log: %v", err)
	}
}
