package duration_test

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"custody/internal/config/duration"
)

// TestJSON: what an operator writes decodes to its time.Duration and
// encodes back to a string that decodes to the same value, in the shortest
// form (no zero units).
func TestJSON(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want time.Duration
		out  string
	}{
		{`"30s"`, 30 * time.Second, `"30s"`},
		{`"2160h"`, 2160 * time.Hour, `"2160h"`},
		{`"1m"`, time.Minute, `"1m"`},
		{`"60s"`, time.Minute, `"1m"`},
		{`"1h30m"`, 90 * time.Minute, `"1h30m"`},
		{`"1h0m5s"`, time.Hour + 5*time.Second, `"1h0m5s"`},
		{`"1500ms"`, 1500 * time.Millisecond, `"1.5s"`},
		{`"20ms"`, 20 * time.Millisecond, `"20ms"`},
		{`"0s"`, 0, `"0s"`},
		{`"0"`, 0, `"0s"`},
		{`"-5s"`, -5 * time.Second, `"-5s"`}, // Go syntax; a field that forbids it says so in Validate
		{`"-1h"`, -time.Hour, `"-1h"`},
	} {
		var d duration.Duration
		if err := json.Unmarshal([]byte(tc.in), &d); err != nil {
			t.Errorf("%s: %v", tc.in, err)
			continue
		}
		if d.Std() != tc.want {
			t.Errorf("%s: decoded %v, want %v", tc.in, d.Std(), tc.want)
		}
		out, err := json.Marshal(d)
		if err != nil || string(out) != tc.out {
			t.Errorf("%s: encoded %s, %v; want %s", tc.in, out, err, tc.out)
		}
		var back duration.Duration
		if err := json.Unmarshal(out, &back); err != nil || back != d {
			t.Errorf("%s: %s decodes to %v, %v", tc.in, out, back, err)
		}
	}
}

// TestRefused: anything but a Go duration string is refused with a
// *json.UnmarshalTypeError that quotes the value, and leaves the
// destination as it was.
func TestRefused(t *testing.T) {
	for _, in := range []string{
		`30`, `30000000000`, `-1`, `1.5`, `""`, `" "`, `"1x"`, `"30"`, `"30 s"`, `" 30s"`, `"s"`, `"1h-5m"`,
		`"9999999999h"`, `true`, `{}`, `[]`, `["30s"]`, `{"d":"30s"}`, `"30s\u0000"`,
	} {
		d := duration.Duration(7 * time.Second)
		err := json.Unmarshal([]byte(in), &d)
		var te *json.UnmarshalTypeError
		if !errors.As(err, &te) || te.Type != duration.Type || te.Value != in {
			t.Errorf("%s: err = %#v; want an UnmarshalTypeError quoting the value", in, err)
		}
		if d != duration.Duration(7*time.Second) {
			t.Errorf("%s: the destination changed to %v", in, d)
		}
	}
	long := `"` + strings.Repeat("1", 200) + `"`
	var d duration.Duration
	var te *json.UnmarshalTypeError
	if err := json.Unmarshal([]byte(long), &d); !errors.As(err, &te) || len(te.Value) > 70 || !strings.HasPrefix(long, strings.TrimSuffix(te.Value, "…")) {
		t.Errorf("a long value is not clipped: %v", err)
	}
}

// TestNull: null keeps the value (the default), as for the configuration's
// other fields.
func TestNull(t *testing.T) {
	d := duration.Duration(time.Minute)
	if err := json.Unmarshal([]byte(`null`), &d); err != nil || d != duration.Duration(time.Minute) {
		t.Fatalf("null: %v, %v", d, err)
	}
}

// TestParse: the error names the value.
func TestParse(t *testing.T) {
	if d, err := duration.Parse("2h45m"); err != nil || d.Std() != 165*time.Minute {
		t.Errorf("2h45m: %v, %v", d, err)
	}
	if _, err := duration.Parse("soon"); err == nil || !strings.Contains(err.Error(), `"soon"`) {
		t.Errorf("soon: %v", err)
	}
}

// FuzzParse: Parse accepts exactly what time.ParseDuration accepts, with
// the same value; String of an accepted value parses back to it; and
// UnmarshalJSON of any input either fails with an UnmarshalTypeError or
// yields a value whose encoding decodes to it again.
func FuzzParse(f *testing.F) {
	for _, s := range []string{"30s", "2160h", "1m", "1h30m", "1.5s", "0", "-5s", "+1h", "", "1x", "30", ".5m", "1h-5m",
		"9223372036854775807ns", "9223372036854775808ns", "-9223372036854775808ns", "2562047h47m16.854775807s", "1µs", "1us"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		d, err := duration.Parse(s)
		want, werr := time.ParseDuration(s)
		if (err == nil) != (werr == nil) || err == nil && d.Std() != want {
			t.Fatalf("Parse(%q) = %v, %v; time.ParseDuration: %v, %v", s, d, err, want, werr)
		}
		if err == nil {
			if back, err := duration.Parse(d.String()); err != nil || back != d {
				t.Fatalf("Parse(%q) = %v; its String %q parses to %v, %v", s, d, d.String(), back, err)
			}
		}
		var j duration.Duration
		if err := json.Unmarshal([]byte(s), &j); err != nil {
			var te *json.UnmarshalTypeError
			var se *json.SyntaxError
			if !errors.As(err, &te) && !errors.As(err, &se) {
				t.Fatalf("UnmarshalJSON(%q): %T %v", s, err, err)
			}
			return
		}
		out, err := json.Marshal(j)
		var back duration.Duration
		if err != nil || json.Unmarshal(out, &back) != nil || back != j {
			t.Fatalf("%q decodes to %v, which encodes to %s, %v, decoding to %v", s, j, out, err, back)
		}
	})
}
