package envelope

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"unicode/utf8"
)

// MaxJSONDepth is the deepest nesting of objects and arrays CanonicalJSON
// accepts (the top-level object is depth 1).
const MaxJSONDepth = 32

// CanonicalJSON returns the canonical form of the public-fields JSON raw,
// which must be a single JSON object of at most MaxPublicFields bytes
// (ErrTooLarge otherwise) in valid UTF-8. The canonical form has:
//
//   - object keys sorted by their UTF-8 bytes, at every depth;
//   - no whitespace outside strings;
//   - strings with only ", \ and control characters escaped: \b \t \n \f \r
//     as such, other controls as \u00xx (lowercase hex); everything else,
//     including <, >, & and U+2028/U+2029, written as raw UTF-8;
//   - numbers exactly as written in raw (not reformatted);
//   - true, false, null as such.
//
// It rejects, with ErrInvalidJSON: invalid JSON or UTF-8, a top-level value
// that is not an object, an object with the same key twice (after
// unescaping), and nesting deeper than MaxJSONDepth. Escaped lone UTF-16
// surrogates decode to U+FFFD, as in encoding/json. CanonicalJSON is
// idempotent: applied to its own output it returns the same bytes.
func CanonicalJSON(raw []byte) ([]byte, error) {
	if len(raw) > MaxPublicFields {
		return nil, fmt.Errorf("%w: public fields are %d bytes, limit %d", ErrTooLarge, len(raw), MaxPublicFields)
	}
	if !utf8.Valid(raw) {
		return nil, fmt.Errorf("%w: not valid UTF-8", ErrInvalidJSON)
	}
	if !json.Valid(raw) {
		return nil, fmt.Errorf("%w: not valid JSON", ErrInvalidJSON)
	}
	trimmed := bytes.TrimLeft(raw, " \t\r\n")
	if len(trimmed) == 0 || trimmed[0] != '{' {
		return nil, fmt.Errorf("%w: not a JSON object", ErrInvalidJSON)
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var out bytes.Buffer
	out.Grow(len(raw))
	if err := canonValue(dec, &out, 0); err != nil {
		return nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("%w: data after the object", ErrInvalidJSON)
	}
	return out.Bytes(), nil
}

func canonValue(dec *json.Decoder, out *bytes.Buffer, depth int) error {
	tok, err := dec.Token()
	if err != nil {
		return fmt.Errorf("%w: %v", ErrInvalidJSON, err)
	}
	switch t := tok.(type) {
	case json.Delim:
		if depth+1 > MaxJSONDepth {
			return fmt.Errorf("%w: nested deeper than %d", ErrInvalidJSON, MaxJSONDepth)
		}
		switch t {
		case '{':
			return canonObject(dec, out, depth+1)
		case '[':
			out.WriteByte('[')
			for first := true; dec.More(); first = false {
				if !first {
					out.WriteByte(',')
				}
				if err := canonValue(dec, out, depth+1); err != nil {
					return err
				}
			}
			if _, err := dec.Token(); err != nil { // ']'
				return fmt.Errorf("%w: %v", ErrInvalidJSON, err)
			}
			out.WriteByte(']')
			return nil
		}
		return fmt.Errorf("%w: unexpected %v", ErrInvalidJSON, t)
	case string:
		writeString(out, t)
	case json.Number:
		out.WriteString(string(t))
	case bool:
		if t {
			out.WriteString("true")
		} else {
			out.WriteString("false")
		}
	case nil:
		out.WriteString("null")
	default:
		return fmt.Errorf("%w: unexpected token %T", ErrInvalidJSON, tok)
	}
	return nil
}

func canonObject(dec *json.Decoder, out *bytes.Buffer, depth int) error {
	type member struct {
		key string
		val []byte
	}
	var members []member
	seen := make(map[string]bool)
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return fmt.Errorf("%w: %v", ErrInvalidJSON, err)
		}
		key, ok := tok.(string)
		if !ok {
			return fmt.Errorf("%w: object key is not a string", ErrInvalidJSON)
		}
		if seen[key] {
			return fmt.Errorf("%w: duplicate key %q", ErrInvalidJSON, key)
		}
		seen[key] = true
		var v bytes.Buffer
		if err := canonValue(dec, &v, depth); err != nil {
			return err
		}
		members = append(members, member{key, v.Bytes()})
	}
	if _, err := dec.Token(); err != nil { // '}'
		return fmt.Errorf("%w: %v", ErrInvalidJSON, err)
	}
	slices.SortFunc(members, func(a, b member) int { return strings.Compare(a.key, b.key) })
	out.WriteByte('{')
	for i, m := range members {
		if i > 0 {
			out.WriteByte(',')
		}
		writeString(out, m.key)
		out.WriteByte(':')
		out.Write(m.val)
	}
	out.WriteByte('}')
	return nil
}

func writeString(out *bytes.Buffer, s string) {
	const hex = "0123456789abcdef"
	out.WriteByte('"')
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '"' || c == '\\':
			out.WriteByte('\\')
			out.WriteByte(c)
		case c == '\b':
			out.WriteString(`\b`)
		case c == '\t':
			out.WriteString(`\t`)
		case c == '\n':
			out.WriteString(`\n`)
		case c == '\f':
			out.WriteString(`\f`)
		case c == '\r':
			out.WriteString(`\r`)
		case c < 0x20:
			out.WriteString(`\u00`)
			out.WriteByte(hex[c>>4])
			out.WriteByte(hex[c&0xf])
		default:
			out.WriteByte(c)
		}
	}
	out.WriteByte('"')
}

// IsCanonicalJSON reports whether raw is already in canonical form:
// exactly when CanonicalJSON(raw) returns raw itself and no error. It reads
// raw once without allocating, so that Validate's check of every envelope
// it parses costs a scan, not a decode and re-encode; when it answers
// false, CanonicalJSON says why (FuzzIsCanonicalJSON holds the two to the
// same answer).
func IsCanonicalJSON(raw []byte) bool {
	if len(raw) > MaxPublicFields || !utf8.Valid(raw) || len(raw) == 0 || raw[0] != '{' {
		return false
	}
	c := canonScanner{b: raw}
	return c.value(0) && c.i == len(raw)
}

// canonScanner checks canonical JSON (CanonicalJSON's rules) from b[i:].
// Each method advances i past what it accepted and reports whether it was
// canonical; on false, i is meaningless.
type canonScanner struct {
	b []byte
	i int
}

func (c *canonScanner) value(depth int) bool {
	if c.i >= len(c.b) {
		return false
	}
	switch ch := c.b[c.i]; {
	case ch == '{':
		return depth+1 <= MaxJSONDepth && c.object(depth+1)
	case ch == '[':
		return depth+1 <= MaxJSONDepth && c.array(depth+1)
	case ch == '"':
		_, ok := c.str()
		return ok
	case ch == '-' || ch >= '0' && ch <= '9':
		return c.number()
	default:
		return c.literal("true") || c.literal("false") || c.literal("null")
	}
}

func (c *canonScanner) object(depth int) bool {
	c.i++ // '{'
	// prev is the previous key's raw content, nil before the first.
	var prev []byte
	for first := true; ; first = false {
		if done, ok := c.sep(first, '}'); !ok || done {
			return ok
		}
		if c.i >= len(c.b) || c.b[c.i] != '"' {
			return false
		}
		key, ok := c.str()
		// Keys strictly increasing by their unescaped UTF-8 bytes: sorted
		// and no duplicates.
		if !ok || prev != nil && compareUnescaped(prev, key) >= 0 {
			return false
		}
		prev = key
		if c.i >= len(c.b) || c.b[c.i] != ':' {
			return false
		}
		c.i++
		if !c.value(depth) {
			return false
		}
	}
}

func (c *canonScanner) array(depth int) bool {
	c.i++ // '['
	for first := true; ; first = false {
		if done, ok := c.sep(first, ']'); !ok || done {
			return ok
		}
		if !c.value(depth) {
			return false
		}
	}
}

// sep steps past the closing delimiter end (done) or, before any element
// but the first, past the comma; ok is false on anything else.
func (c *canonScanner) sep(first bool, end byte) (done, ok bool) {
	if c.i >= len(c.b) {
		return false, false
	}
	if c.b[c.i] == end {
		c.i++
		return true, true
	}
	if !first {
		if c.b[c.i] != ',' {
			return false, false
		}
		c.i++
	}
	return false, true
}

// str accepts a string in writeString's form and returns its raw content
// (between the quotes, escapes as written).
func (c *canonScanner) str() ([]byte, bool) {
	c.i++ // '"'
	start := c.i
	for c.i < len(c.b) {
		ch := c.b[c.i]
		switch {
		case ch == '"':
			c.i++
			return c.b[start : c.i-1], true
		case ch < 0x20:
			return nil, false // a control character must be escaped
		case ch == '\\':
			n, ok := canonEscape(c.b[c.i:])
			if !ok {
				return nil, false
			}
			c.i += n
		default:
			c.i++ // UTF-8 was checked for the whole input
		}
	}
	return nil, false
}

// canonEscape returns the length of the escape at the start of b if it is
// the one writeString writes for its character.
func canonEscape(b []byte) (int, bool) {
	if len(b) < 2 {
		return 0, false
	}
	switch b[1] {
	case '"', '\\', 'b', 't', 'n', 'f', 'r':
		return 2, true
	case 'u':
		if len(b) < 6 || b[2] != '0' || b[3] != '0' {
			return 0, false
		}
		hi, lo := lowerHex(b[4]), lowerHex(b[5])
		if hi < 0 || hi > 1 || lo < 0 {
			return 0, false
		}
		switch r := hi<<4 | lo; r {
		case '\b', '\t', '\n', '\f', '\r':
			return 0, false // written as \b \t \n \f \r
		}
		return 6, true
	}
	return 0, false
}

func lowerHex(ch byte) int {
	switch {
	case ch >= '0' && ch <= '9':
		return int(ch - '0')
	case ch >= 'a' && ch <= 'f':
		return int(ch-'a') + 10
	}
	return -1
}

// compareUnescaped compares two raw string contents in canonical form by
// the bytes they stand for.
func compareUnescaped(a, b []byte) int {
	for {
		ca, na := unescapeNext(a)
		cb, nb := unescapeNext(b)
		switch {
		case na == 0 && nb == 0:
			return 0
		case na == 0:
			return -1
		case nb == 0:
			return 1
		case ca != cb:
			if ca < cb {
				return -1
			}
			return 1
		}
		a, b = a[na:], b[nb:]
	}
}

// unescapeNext returns the first byte that the canonical string content s
// stands for and how many bytes of s it took (0 at the end).
func unescapeNext(s []byte) (byte, int) {
	if len(s) == 0 {
		return 0, 0
	}
	if s[0] != '\\' {
		return s[0], 1
	}
	switch s[1] {
	case 'b':
		return '\b', 2
	case 't':
		return '\t', 2
	case 'n':
		return '\n', 2
	case 'f':
		return '\f', 2
	case 'r':
		return '\r', 2
	case 'u': // \u00xx, checked by canonEscape
		return byte(lowerHex(s[4])<<4 | lowerHex(s[5])), 6
	}
	return s[1], 2 // \" or \\
}

// number accepts a JSON number (written as is in the canonical form).
func (c *canonScanner) number() bool {
	b, i := c.b, c.i
	if i < len(b) && b[i] == '-' {
		i++
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case i < len(b) && b[i] >= '1' && b[i] <= '9':
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
		}
	default:
		return false
	}
	digits := func() bool {
		start := i
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
		}
		return i > start
	}
	if i < len(b) && b[i] == '.' {
		i++
		if !digits() {
			return false
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		if !digits() {
			return false
		}
	}
	c.i = i
	return true
}

func (c *canonScanner) literal(word string) bool {
	if !bytes.HasPrefix(c.b[c.i:], []byte(word)) {
		return false
	}
	c.i += len(word)
	return true
}
