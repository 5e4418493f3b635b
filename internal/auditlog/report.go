package auditlog

import (
	"cmp"
	"slices"
	"time"
)

// The reviewer's report (custodyctl log report) is a Summary rendered as
// HTML. Summarize computes it; rendering, and escaping what it renders, is
// the caller's.

// Burst rule: at least BurstDenials denials for one principal (or one uid,
// for callers without a principal) within BurstWindow, the first and the
// last included (custodyctl's report states it in a heading).
const (
	BurstDenials = 5
	BurstWindow  = time.Minute
)

// SummaryOptions selects the entries a Summary counts.
type SummaryOptions struct {
	// From and To bound the entries' times: From inclusive, To exclusive; a
	// zero bound is open.
	From, To time.Time
	// Match, if not nil, further selects among the entries in the window.
	Match func(Entry) bool
}

// Summary counts the selected entries of a log. Every string in it is an
// entry's value as recorded (application-supplied, possibly hostile:
// control and bidi characters, markup): it is counted, never interpreted,
// and whoever prints it must escape it.
type Summary struct {
	From, To time.Time // SummaryOptions.From and To

	Entries int // entries selected
	Denied  int // of which denied
	Failed  int // of which failed
	Audits  int // of which carry a court order (audit decrypts, whatever their outcome)

	// Days has one Tally per UTC day ("2006-01-02") with a selected entry,
	// in date order. Purposes and Principals tally the entries by purpose
	// and principal ("" for entries without one), Orders the entries with
	// a court order by its id; each is ordered by Total, largest first,
	// then by Key (byte order).
	Days, Purposes, Principals, Orders []Tally

	// Bursts are the runs of denials by one caller that meet the burst
	// rule (BurstDenials within BurstWindow), in order of FirstIndex (of
	// several logs: in order of Start, then Log, then FirstIndex).
	Bursts []Burst

	// Logs has, for each directory given to SummarizeLogs (in its order),
	// the number of entries selected from it.
	Logs []int
}

// Tally counts the entries that share a Key, by outcome.
type Tally struct {
	Key                     string
	Allowed, Denied, Failed int
}

// Total is the number of entries tallied.
func (t Tally) Total() int { return t.Allowed + t.Denied + t.Failed }

// Burst is a run of denials of one caller: the caller's Principal, or,
// when that is "", its UID.
type Burst struct {
	Principal  string
	UID        uint32 // only when Principal is ""
	Start, End time.Time
	Count      int
	FirstIndex int64    // the log index of the run's first denial
	Log        int      // the log of that denial: its position in SummarizeLogs's dirs (0 for Summarize)
	Codes      []string // the distinct error codes of the run, sorted
}

// Summarize reads dir's entries (ReadEntries: parsed strictly, unverified:
// run Verify for that) and counts those opts selects. A malformed entry
// fails it, as it fails ReadEntries. A window without entries gives a
// Summary with zero counts and empty lists.
//
// Bursts: a caller's denials are taken in log order; a run starts at the
// earliest denial not yet in a run and takes every following denial of that
// caller at most BurstWindow after it; a run of BurstDenials or more is a
// Burst and the next run starts after it, otherwise the next run starts at
// the following denial.
func Summarize(dir string, opts SummaryOptions) (*Summary, error) {
	return SummarizeLogs([]string{dir}, opts)
}

// SummarizeLogs is Summarize over several logs (a fleet's, one per daemon)
// counted together, with each log's count in Logs. A caller's denials are
// taken in time order across the logs (equal times: in dirs order, then
// log order), so that a burst spread over several daemons is one burst.
func SummarizeLogs(dirs []string, opts SummaryOptions) (*Summary, error) {
	s := &Summary{From: opts.From, To: opts.To, Logs: make([]int, len(dirs))}
	type counts struct{ days, purposes, principals, orders map[string]*Tally }
	c := counts{map[string]*Tally{}, map[string]*Tally{}, map[string]*Tally{}, map[string]*Tally{}}
	type caller struct {
		principal string
		uid       uint32
	}
	type denial struct {
		t    time.Time
		log  int
		i    int64
		code string
	}
	denials := map[caller][]denial{}
	count := func(m map[string]*Tally, k string, o Outcome) {
		t := m[k]
		if t == nil {
			t = &Tally{Key: k}
			m[k] = t
		}
		switch o {
		case Denied:
			t.Denied++
		case Failed:
			t.Failed++
		default:
			t.Allowed++
		}
	}
	for log, dir := range dirs {
		err := ReadEntries(dir, func(i int64, e Entry) error {
			if !opts.From.IsZero() && e.Time.Before(opts.From) || !opts.To.IsZero() && !e.Time.Before(opts.To) ||
				opts.Match != nil && !opts.Match(e) {
				return nil
			}
			s.Entries++
			s.Logs[log]++
			switch e.Outcome {
			case Denied:
				s.Denied++
				who := caller{principal: e.Principal}
				if who.principal == "" {
					who.uid = e.Caller.UID
				}
				denials[who] = append(denials[who], denial{e.Time, log, i, e.Code})
			case Failed:
				s.Failed++
			}
			count(c.days, e.Time.UTC().Format("2006-01-02"), e.Outcome)
			count(c.purposes, e.Purpose, e.Outcome)
			count(c.principals, e.Principal, e.Outcome)
			if e.CourtOrder != "" {
				s.Audits++
				count(c.orders, e.CourtOrder, e.Outcome)
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	if len(dirs) > 1 {
		for _, ds := range denials {
			slices.SortStableFunc(ds, func(a, b denial) int { return cmp.Or(a.t.Compare(b.t), cmp.Compare(a.log, b.log)) })
		}
	}
	s.Days = sortTallies(c.days, func(a, b Tally) int { return cmp.Compare(a.Key, b.Key) })
	byTotal := func(a, b Tally) int { return cmp.Or(cmp.Compare(b.Total(), a.Total()), cmp.Compare(a.Key, b.Key)) }
	s.Purposes = sortTallies(c.purposes, byTotal)
	s.Principals = sortTallies(c.principals, byTotal)
	s.Orders = sortTallies(c.orders, byTotal)
	for who, ds := range denials { // in any order: Bursts are sorted below
		for i := 0; i < len(ds); {
			j := i
			for j+1 < len(ds) && ds[j+1].t.Sub(ds[i].t) <= BurstWindow {
				j++
			}
			if j-i+1 < BurstDenials {
				i++
				continue
			}
			var codes []string
			for _, d := range ds[i : j+1] {
				codes = append(codes, d.code)
			}
			slices.Sort(codes)
			s.Bursts = append(s.Bursts, Burst{Principal: who.principal, UID: who.uid, Start: ds[i].t, End: ds[j].t,
				Count: j - i + 1, FirstIndex: ds[i].i, Log: ds[i].log, Codes: slices.Compact(codes)})
			i = j + 1
		}
	}
	if len(dirs) > 1 {
		slices.SortFunc(s.Bursts, func(a, b Burst) int {
			return cmp.Or(a.Start.Compare(b.Start), cmp.Compare(a.Log, b.Log), cmp.Compare(a.FirstIndex, b.FirstIndex))
		})
	} else {
		slices.SortFunc(s.Bursts, func(a, b Burst) int { return cmp.Compare(a.FirstIndex, b.FirstIndex) })
	}
	return s, nil
}

// sortTallies returns m's tallies ordered by order (a total order on them).
func sortTallies(m map[string]*Tally, order func(a, b Tally) int) []Tally {
	out := make([]Tally, 0, len(m))
	for _, t := range m {
		out = append(out, *t)
	}
	slices.SortFunc(out, order)
	return out
}
