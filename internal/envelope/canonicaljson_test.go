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
	// Already canonical or one byte away from it (IsCanonicalJSON's edges).
	{`{"a":"\u001f\u0000","a\u0000":1,"b":[true,false,null,-0.5e-7,{}]}`, `{"a":"\u001f\u0000","a\u0000":1,"b":[true,false,null,-0.5e-7,{}]}`, nil},
	{`{"\"":1,"\\":2,"]":3}`, `{"\"":1,"\\":2,"]":3}`, nil},
	{`{"a":"\u001F"}`, `{"a":"\u001f"}`, nil},
	{`{"a":"\u000a"}`, `{"a":"\n"}`, nil},
	{`{"a":"\u007f"}`, "{\"a\":\"\x7f\"}", nil},
	{`{"a":1 }`, `{"a":1}`, nil},
	{`{"a":1,"a\u0000":2,"a":3}`, "", envelope.ErrInvalidJSON},
	{`{"a":tru}`, "", envelope.ErrInvalidJSON},
	{`{"a":-}`, "", envelope.ErrInvalidJSON},
	{`{"a":1.}`, "", envelope.ErrInvalidJSON},
	{`{"a":1e}`, "", envelope.ErrInvalidJSON},
	{`{"a":"x`, "", envelope.ErrInvalidJSON},
	{`{"a"`, "", envelope.ErrInvalidJSON},
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

// TestIsCanonicalJSON: IsCanonicalJSON(in) exactly when CanonicalJSON
// returns in itself, and it allocates nothing.
func TestIsCanonicalJSON(t *testing.T) {
	for _, c := range canonicalCases {
		want := c.err == nil && c.want == c.in
		if got := envelope.IsCanonicalJSON([]byte(c.in)); got != want {
			t.Errorf("IsCanonicalJSON(%.60q) = %v, want %v", c.in, got, want)
		}
	}
	doc := []byte(`{"a":"\u001f","b":[1,-2.5e+3,{"c":null,"d":true}],"e":"café \"x\""}`)
	if !envelope.IsCanonicalJSON(doc) {
		t.Fatalf("IsCanonicalJSON(%s) = false", doc)
	}
	if a := testing.AllocsPerRun(100, func() { envelope.IsCanonicalJSON(doc) }); a != 0 {
		t.Errorf("IsCanonicalJSON: %v allocations, want 0", a)
	}
}
