package policy

import (
	"fmt"
	"strings"
	"time"
	_ "time/tzdata" // the same policy loads on a host without a zone database
)

// window is a weekly recurring time window in one time zone. Times are
// minutes after local midnight; end may be 1440 ("24:00"). When start > end
// the window crosses midnight: it opens at start on each of its days and
// closes at end on the next day.
type window struct {
	days       [7]bool // indexed by time.Weekday
	start, end int
	loc        *time.Location
}

var dayNames = [7]string{"sun", "mon", "tue", "wed", "thu", "fri", "sat"}

func parseDay(s string) (time.Weekday, bool) {
	for i, d := range dayNames {
		if s == d {
			return time.Weekday(i), true
		}
	}
	return 0, false
}

// parseClock parses "HH:MM" (two digits each) into minutes after midnight.
// "24:00" is accepted only when allow24 is set.
func parseClock(s string, allow24 bool) (int, error) {
	if len(s) != 5 || s[2] != ':' {
		return 0, fmt.Errorf("time %q is not HH:MM", s)
	}
	for _, i := range []int{0, 1, 3, 4} {
		if s[i] < '0' || s[i] > '9' {
			return 0, fmt.Errorf("time %q is not HH:MM", s)
		}
	}
	h := int(s[0]-'0')*10 + int(s[1]-'0')
	m := int(s[3]-'0')*10 + int(s[4]-'0')
	switch {
	case h == 24 && m == 0 && allow24:
		return 24 * 60, nil
	case h > 23 || m > 59:
		last := "23:59"
		if allow24 {
			last = "24:00"
		}
		return 0, fmt.Errorf("time %q is out of range (00:00 to %s)", s, last)
	}
	return h*60 + m, nil
}

// loadZone resolves an IANA zone name; "" means UTC. "Local" is refused.
func loadZone(name string) (*time.Location, error) {
	switch {
	case name == "":
		return time.UTC, nil
	case strings.EqualFold(name, "local"):
		return nil, fmt.Errorf("time zone %q depends on the daemon's environment; name an IANA zone", name)
	}
	loc, err := time.LoadLocation(name)
	if err != nil {
		return nil, fmt.Errorf("unknown time zone %q", name)
	}
	return loc, nil
}

// contains reports whether the window is open at instant t, judged by the
// wall clock of the window's zone, to the minute.
func (w *window) contains(t time.Time) bool {
	lt := t.In(w.loc)
	m := lt.Hour()*60 + lt.Minute()
	d := lt.Weekday()
	if w.start < w.end {
		return w.days[d] && m >= w.start && m < w.end
	}
	// Crosses midnight: the evening part belongs to day d, the morning part
	// to the day before.
	prev := (d + 6) % 7
	return (w.days[d] && m >= w.start) || (w.days[prev] && m < w.end)
}
