package server

import "custody/internal/api"

// The decrypt routes decode their bodies here first: a decrypt request is
// a flat object of strings (the envelope's text, ~2 KB, most of it), and
// encoding/json scans it twice (once to find the value's end, once to
// decode): ~11 µs a request here against decodeFast's ~1.7 µs
// (BenchmarkDecodeDecryptRequest), where a warm decrypt costs custodyd
// 150–400 µs of CPU in all (docs/performance.md). decodeFast
// handles only the plain form that internal/client and every ordinary
// encoder send: the known keys, spelled exactly, once each; strings of
// printable ASCII without escapes; "fields" an array of such strings.
// Anything else (escapes, other bytes, null, unknown or repeated or
// differently cased keys, trailing data) makes it return false, and
// decodeJSON hands the body to decodeStrict (encoding/json), whose answer,
// value or error, is the contract. FuzzDecodeFast checks that whatever
// decodeFast accepts decodeStrict decodes to the same value.

// decodeFast decodes body into v, a *api.DecryptRequest or a
// *api.Batch[api.DecryptRequest], when body is in the plain form; it
// reports whether it did. On false, v is unchanged.
func decodeFast(body []byte, v any) bool {
	s := scanner{b: body}
	switch v := v.(type) {
	case *api.DecryptRequest:
		var d api.DecryptRequest
		if !s.decryptRequest(&d) || !s.end() {
			return false
		}
		*v = d
		return true
	case *api.Batch[api.DecryptRequest]:
		var b api.Batch[api.DecryptRequest]
		if !s.decryptBatch(&b) || !s.end() {
			return false
		}
		*v = b
		return true
	}
	return false
}

// scanner reads the plain form of JSON; every method returns false at the
// first byte outside it.
type scanner struct {
	b []byte
	i int
}

func (s *scanner) space() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

// next consumes c after optional white space, if it is next.
func (s *scanner) next(c byte) bool {
	s.space()
	if s.i < len(s.b) && s.b[s.i] == c {
		s.i++
		return true
	}
	return false
}

// end reports whether only white space is left.
func (s *scanner) end() bool {
	s.space()
	return s.i == len(s.b)
}

// str reads a string of printable ASCII without a backslash.
func (s *scanner) str() (string, bool) {
	if !s.next('"') {
		return "", false
	}
	for j := s.i; j < len(s.b); j++ {
		switch c := s.b[j]; {
		case c == '"':
			v := string(s.b[s.i:j])
			s.i = j + 1
			return v, true
		case c < 0x20 || c >= 0x7f || c == '\\':
			return "", false
		}
	}
	return "", false
}

// strings reads an array of strings; [] is an empty, non-nil slice, as
// encoding/json makes it.
func (s *scanner) strings() ([]string, bool) {
	if !s.next('[') {
		return nil, false
	}
	out := []string{}
	if s.next(']') {
		return out, true
	}
	for {
		v, ok := s.str()
		if !ok {
			return nil, false
		}
		out = append(out, v)
		if s.next(']') {
			return out, true
		}
		if !s.next(',') {
			return nil, false
		}
	}
}

// object reads an object whose keys member reads, each at most once.
func (s *scanner) object(member func(key string) bool) bool {
	if !s.next('{') {
		return false
	}
	if s.next('}') {
		return true
	}
	seen := make(map[string]bool, 5)
	for {
		k, ok := s.str()
		if !ok || seen[k] || !s.next(':') || !member(k) {
			return false
		}
		seen[k] = true
		if s.next('}') {
			return true
		}
		if !s.next(',') {
			return false
		}
	}
}

func (s *scanner) decryptRequest(d *api.DecryptRequest) bool {
	return s.object(func(key string) bool {
		var ok bool
		switch key {
		case "envelope":
			d.Envelope, ok = s.str()
		case "as":
			d.As, ok = s.str()
		case "purpose":
			d.Purpose, ok = s.str()
		case "transaction_id":
			d.TransactionID, ok = s.str()
		case "fields":
			d.Fields, ok = s.strings()
		}
		return ok
	})
}

func (s *scanner) decryptBatch(b *api.Batch[api.DecryptRequest]) bool {
	return s.object(func(key string) bool {
		if key != "items" || !s.next('[') {
			return false
		}
		b.Items = []api.DecryptRequest{}
		if s.next(']') {
			return true
		}
		for {
			var d api.DecryptRequest
			if !s.decryptRequest(&d) {
				return false
			}
			b.Items = append(b.Items, d)
			if s.next(']') {
				return true
			}
			if !s.next(',') {
				return false
			}
		}
	})
}
