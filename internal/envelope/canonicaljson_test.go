package envelope_test

import (
	"errors"
	"strings"
	"testing"

	"custody/internal/envelope"
)

var canonicalCases = []struct {
	in, want string
	err      error
}{
	{`{}`, `{}`, nil},
	{" \t\n{ } \n", `{}`, nil},
	{`{"b":1,"a":2}`, `{"a":2,"b":1}`, nil},
	{`{"a":{"d":[{"z":1,"y":2}],"c":null},"B":true}`, `{"B":true,"a":{"c":null,"d":[{"y":2,"z":1}]}}`, nil},
	{`{"n":[1.50,-0,1e+10,1E-3,0.0]}`, `{"n":[1.50,-0,1e+10,1E-3,0.0]}`, nil},
	{`{"h":"<a href=\"x\">&amp;</a>"}`, `{"h":"<a href=\"x\">&amp;</a>"}`, nil},
	{`{"u":"\u00e9\u2028\/\ud83d\ude00"}`, "{\"u\":\"\u00e9\u2028/\U0001F600\"}", nil},
	{`{"c":"\u0000\u001f\b\t\n\f\r\"\\"}`, `{"c":"\u0000\u001f\b\t\n\f\r\"\\"}`, nil},
	{`{"\u0061":1}`, `{"a":1}`, nil},
	{`{"é":1,"z":2,"Z":3}`, `{"Z":3,"z":2,"é":1}`, nil},
	{`{"a":[]}`, `{"a":[]}`, nil},
	{`{"a":1,"a":2}`, "", envelope.ErrInvalidJSON},
	{`{"a":1,"\u0061":2}`, "", envelope.ErrInvalidJSON},
	{`{"x":{"a":1,"a":1}}`, "", envelope.ErrInvalidJSON},
	{`[]`, "", envelope.ErrInvalidJSON},
	{`"s"`, "", envelope.ErrInvalidJSON},
	{`1`, "", envelope.ErrInvalidJSON},
	{`null`, "", envelope.ErrInvalidJSON},
	{``, "", envelope.ErrInvalidJSON},
	{`{} {}`, "", envelope.ErrInvalidJSON},
	{`{}x`, "", envelope.ErrInvalidJSON},
	{`{"a":1,}`, "", envelope.ErrInvalidJSON},
	{`{'a':1}`, "", envelope.ErrInvalidJSON},
	{`{"a":01}`, "", envelope.ErrInvalidJSON},
	{`{"a":NaN}`, "", envelope.ErrInvalidJSON},
	{"{\"a\":\"\xff\"}", "", envelope.ErrInvalidJSON},
	{"{\"a\":\"\x01\"}", "", envelope.ErrInvalidJSON},
	{`{"a":` + strings.Repeat("[", 31) + strings.Repeat("]", 31) + `}`, `{"a":` + strings.Repeat("[", 31) + strings.Repeat("]", 31) + `}`, nil},
	{`{"a":` + strings.Repeat("[", 32) + strings.Repeat("]", 32) + `}`, "", envelope.ErrInvalidJSON},
	{`{"a":"` + strings.Repeat("x", envelope.MaxPublicFields) + `"}`, "", envelope.ErrTooLarge},
}

func TestCanonicalJSON(t *testing.T) {
	for _, c := range canonicalCases {
		got, err := envelope.CanonicalJSON([]byte(c.in))
		name := c.in
		if len(name) > 60 {
			name = name[:60]
		}
		if c.err != nil {
			if !errors.Is(err, c.err) {
				t.Errorf("CanonicalJSON(%q) = %q, %v; want %v", name, got, err, c.err)
			}
			continue
		}
		if err != nil || string(got) != c.want {
			t.Errorf("CanonicalJSON(%q) = %q, %v; want %q", name, got, err, c.want)
			continue
		}
		again, err := envelope.CanonicalJSON(got)
		if err != nil || string(again) != string(got) {
			t.Errorf("not idempotent on %q: %q, %v", got, again, err)
		}
	}
}
