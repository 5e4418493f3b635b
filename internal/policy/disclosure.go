package policy

import (
	"encoding/json"
	"slices"
)

// Disclosure says which confidential fields one authorized decryption may
// release: all of them, or a set of names. The zero value releases nothing.
// Only AuthorizeDecrypt makes a non-empty Disclosure.
type Disclosure struct {
	all    bool
	fields []string // sorted, unique; unused when all
}

// Filter returns a new map holding only the entries of fields that the
// disclosure releases; names it releases but fields lacks are simply absent.
// The values are shared with fields, not copied. The result is never nil.
func (d Disclosure) Filter(fields map[string]json.RawMessage) map[string]json.RawMessage {
	out := make(map[string]json.RawMessage)
	if d.all {
		for k, v := range fields {
			out[k] = v
		}
		return out
	}
	for _, k := range d.fields {
		if v, ok := fields[k]; ok {
			out[k] = v
		}
	}
	return out
}

// Select returns the names of present that the disclosure releases, in the
// order of present: the fields of an envelope v2 (whose names are in its
// header) to decrypt. The others are not decrypted at all.
func (d Disclosure) Select(present []string) []string {
	out := make([]string, 0, len(present))
	for _, k := range present {
		if d.all || slices.Contains(d.fields, k) {
			out = append(out, k)
		}
	}
	return out
}

// Fields returns the released field names, sorted, for the access log:
// ["*"] when the disclosure releases every field, empty for the zero value.
// The caller owns the slice.
func (d Disclosure) Fields() []string {
	if d.all {
		return []string{"*"}
	}
	return slices.Clone(d.fields)
}
