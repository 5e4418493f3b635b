// Package duration is the Duration type of custodyd's configuration file:
// a time.Duration written in JSON as a Go duration string ("30s", "1m",
// "2160h").
//
// It is a leaf (it imports only the standard library) so that the packages
// whose configuration sections internal/config embeds — internal/auditlog
// and internal/orders — can use it without importing internal/config.
//
// Decoding refuses anything that is not a string time.ParseDuration accepts,
// naming the value; the range of each field is checked by that field's
// Validate, with a message naming its JSON path.
package duration

import (
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"time"
)

// Duration is a time.Duration that is a Go duration string in JSON.
// Its zero value is 0s.
type Duration time.Duration

// Std returns d as a time.Duration.
func (d Duration) Std() time.Duration { return time.Duration(d) }

// String formats d as a Go duration without the zero units that
// time.Duration.String appends: "2160h", "1m", "1h30m", "1.5s", "0s".
// Parse(d.String()) == d for every d.
func (d Duration) String() string {
	s := time.Duration(d).String()
	if t, ok := strings.CutSuffix(s, "m0s"); ok {
		s = t + "m"
		if t, ok := strings.CutSuffix(s, "h0m"); ok {
			s = t + "h"
		}
	}
	return s
}

// Want says what a Duration is written as, for error messages.
const Want = `a Go duration string such as "30s", "1m" or "2160h"`

// Parse reads a Go duration string (time.ParseDuration: "300ms", "-1.5h",
// "2h45m"; "0" is the only value without a unit). The error names s.
func Parse(s string) (Duration, error) {
	v, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("%q is not %s", s, Want)
	}
	return Duration(v), nil
}

// Type is the reflect.Type of Duration, which a decoding error of
// UnmarshalJSON carries (see there).
var Type = reflect.TypeFor[Duration]()

// UnmarshalJSON reads a JSON string that Parse accepts. JSON null leaves d
// as it is, as for the configuration's other fields (the default stays).
//
// Anything else is refused with a *json.UnmarshalTypeError whose Type is
// Type and whose Value is the JSON text refused (`"1x"`, `30`; clipped to
// maxValue bytes): the
// encoding/json decoder fills in its Field with the JSON path
// ("limits.read_timeout"), so the caller can name both the field and the
// value (internal/config does).
func (d *Duration) UnmarshalJSON(b []byte) error {
	if string(b) == "null" {
		return nil
	}
	var s string
	if len(b) > 0 && b[0] == '"' && json.Unmarshal(b, &s) == nil {
		if v, err := Parse(s); err == nil {
			*d = v
			return nil
		}
	}
	if len(b) > maxValue {
		b = append(b[:maxValue:maxValue], "…"...)
	}
	return &json.UnmarshalTypeError{Value: string(b), Type: Type}
}

// maxValue bounds the JSON text an error quotes.
const maxValue = 64

// MarshalJSON writes d.String() as a JSON string, which UnmarshalJSON reads
// back to d.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(d.String()) }
