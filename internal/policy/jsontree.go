package policy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strconv"
)

// maxDepth bounds nesting; the schema needs 6 levels.
const maxDepth = 16

type kind uint8

const (
	kindObject kind = iota + 1
	kindArray
	kindString
	kindNumber
	kindBool
	kindNull
)

func (k kind) String() string {
	switch k {
	case kindObject:
		return "an object"
	case kindArray:
		return "an array"
	case kindString:
		return "a string"
	case kindNumber:
		return "a number"
	case kindBool:
		return "a boolean"
	case kindNull:
		return "null"
	}
	return "?"
}

// node is one JSON value. Objects keep their keys in file order.
type node struct {
	kind kind
	text string   // string value, or the literal text of a number
	keys []string // object keys, in order
	vals []*node  // object values (parallel to keys) or array elements
}

// field returns the value of key in an object, or nil.
func (n *node) field(key string) *node {
	for i, k := range n.keys {
		if k == key {
			return n.vals[i]
		}
	}
	return nil
}

// readTree reads exactly one JSON value from data, rejecting duplicate keys,
// excessive nesting and trailing data. Errors are *FieldError.
func readTree(data []byte) (*node, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	n, err := readValue(dec, "", 0)
	if err != nil {
		return nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, &FieldError{Msg: fmt.Sprintf("offset %d: unexpected data after the policy object", dec.InputOffset())}
	}
	return n, nil
}

func syntaxError(dec *json.Decoder, path string, err error) error {
	if errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	return &FieldError{Path: path, Msg: fmt.Sprintf("offset %d: invalid JSON: %v", dec.InputOffset(), err)}
}

func readValue(dec *json.Decoder, path string, depth int) (*node, error) {
	if depth > maxDepth {
		return nil, &FieldError{Path: path, Msg: fmt.Sprintf("nested deeper than %d levels", maxDepth)}
	}
	tok, err := dec.Token()
	if err != nil {
		return nil, syntaxError(dec, path, err)
	}
	switch t := tok.(type) {
	case json.Delim:
		switch t {
		case '{':
			n := &node{kind: kindObject}
			seen := make(map[string]bool)
			for dec.More() {
				kt, err := dec.Token()
				if err != nil {
					return nil, syntaxError(dec, path, err)
				}
				key, ok := kt.(string)
				if !ok { // the decoder does not allow this; be safe
					return nil, &FieldError{Path: path, Msg: "object key is not a string"}
				}
				kp := joinKey(path, key)
				if seen[key] {
					return nil, &FieldError{Path: kp, Msg: "duplicate key"}
				}
				seen[key] = true
				v, err := readValue(dec, kp, depth+1)
				if err != nil {
					return nil, err
				}
				n.keys = append(n.keys, key)
				n.vals = append(n.vals, v)
			}
			if _, err := dec.Token(); err != nil {
				return nil, syntaxError(dec, path, err)
			}
			return n, nil
		case '[':
			n := &node{kind: kindArray}
			for i := 0; dec.More(); i++ {
				v, err := readValue(dec, joinIndex(path, i), depth+1)
				if err != nil {
					return nil, err
				}
				n.vals = append(n.vals, v)
			}
			if _, err := dec.Token(); err != nil {
				return nil, syntaxError(dec, path, err)
			}
			return n, nil
		}
		return nil, &FieldError{Path: path, Msg: fmt.Sprintf("offset %d: invalid JSON: unexpected %q", dec.InputOffset(), t)}
	case string:
		return &node{kind: kindString, text: t}, nil
	case json.Number:
		return &node{kind: kindNumber, text: t.String()}, nil
	case bool:
		return &node{kind: kindBool, text: strconv.FormatBool(t)}, nil
	case nil:
		return &node{kind: kindNull}, nil
	}
	return nil, &FieldError{Path: path, Msg: fmt.Sprintf("unexpected token %v", tok)}
}

var plainKey = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)

// joinKey appends an object key to a path: a.b, or a["odd key"] when the key
// is not plain.
func joinKey(path, key string) string {
	if !plainKey.MatchString(key) {
		return path + "[" + strconv.Quote(key) + "]"
	}
	if path == "" {
		return key
	}
	return path + "." + key
}

func joinIndex(path string, i int) string { return path + "[" + strconv.Itoa(i) + "]" }
