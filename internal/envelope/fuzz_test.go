package envelope_test

import (
	"bytes"
	"crypto/ecdsa"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"custody/internal/envelope"
	"custody/internal/envelope/internal/kat"
)

// The committed seed corpora in testdata/fuzz are written from the
// known-answer vectors by
//
//	ENVELOPE_WRITE_CORPUS=1 go test -run TestFuzzCorpus ./internal/envelope
//
// Without the variable, TestFuzzCorpus checks that they are present.
func TestFuzzCorpus(t *testing.T) {
	raw, err := os.ReadFile(vectorsFile)
	if err != nil {
		t.Fatal(err)
	}
	var file kat.File
	if err := json.Unmarshal(raw, &file); err != nil {
		t.Fatal(err)
	}
	type seed struct {
		dir, name, value string
	}
	var seeds []seed
	for _, v := range file.Vectors {
		e, err := envelope.ParseText(v.Envelope)
		if err != nil {
			t.Fatal(err)
		}
		b := e.Marshal()
		seeds = append(seeds,
			seed{"FuzzParse", "vector-" + v.Name, fmt.Sprintf("[]byte(%q)", b)},
			seed{"FuzzParse", "truncated-" + v.Name, fmt.Sprintf("[]byte(%q)", b[:len(b)/2])},
			seed{"FuzzParseText", "vector-" + v.Name, fmt.Sprintf("string(%q)", v.Envelope)},
			seed{"FuzzCanonicalJSON", "vector-" + v.Name, fmt.Sprintf("[]byte(%q)", v.PublicFields)},
			seed{"FuzzIsCanonicalJSON", "vector-" + v.Name, fmt.Sprintf("[]byte(%q)", v.PublicFields)},
		)
	}
	raw2, err := os.ReadFile(vectorsV2File)
	if err != nil {
		t.Fatal(err)
	}
	var file2 kat.FileV2
	if err := json.Unmarshal(raw2, &file2); err != nil {
		t.Fatal(err)
	}
	for _, v := range file2.Vectors {
		e, err := envelope.ParseText(v.Envelope)
		if err != nil {
			t.Fatal(err)
		}
		b := e.Marshal()
		seeds = append(seeds,
			seed{"FuzzParse", "vector-" + v.Name, fmt.Sprintf("[]byte(%q)", b)},
			seed{"FuzzParseV2", "vector-" + v.Name, fmt.Sprintf("[]byte(%q)", b)},
			seed{"FuzzParseV2", "truncated-" + v.Name, fmt.Sprintf("[]byte(%q)", b[:len(b)-20])},
			seed{"FuzzParseText", "vector-" + v.Name, fmt.Sprintf("string(%q)", v.Envelope)},
			seed{"FuzzSplitFields", "vector-" + v.Name, fmt.Sprintf("[]byte(%q)", v.Confidential)},
		)
	}
	write := os.Getenv("ENVELOPE_WRITE_CORPUS") == "1"
	for _, s := range seeds {
		path := filepath.Join("testdata", "fuzz", s.dir, s.name)
		content := "go test fuzz v1\n" + s.value + "\n"
		if write {
			if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		got, err := os.ReadFile(path)
		if err != nil || string(got) != content {
			t.Errorf("seed corpus file %s missing or stale (ENVELOPE_WRITE_CORPUS=1 rewrites it): %v", path, err)
		}
	}
}

func isSentinel(err error) bool {
	return errors.Is(err, envelope.ErrMalformed) || errors.Is(err, envelope.ErrVersion) || errors.Is(err, envelope.ErrTooLarge)
}

func FuzzParse(f *testing.F) {
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := envelope.Parse(b)
		if err != nil {
			if !isSentinel(err) {
				t.Fatalf("error without a sentinel: %v", err)
			}
			return
		}
		if got := e.Marshal(); !bytes.Equal(got, b) {
			t.Fatalf("Parse accepted bytes that do not re-marshal identically:\n in  %x\n out %x", b, got)
		}
		if err := e.Validate(); err != nil {
			t.Fatalf("parsed envelope fails Validate: %v", err)
		}
		e2, err := envelope.ParseText(e.Text())
		if err != nil || !bytes.Equal(e2.Marshal(), b) {
			t.Fatalf("text round trip: %v", err)
		}
		if err := e.Verify(func(string) (*ecdsa.PublicKey, error) { return nil, errUnknownKey }); !errors.Is(err, envelope.ErrSignature) {
			t.Fatalf("Verify = %v", err)
		}
		for i := range e.Header.Stanzas {
			_ = e.OpenRequest(i, "k", make([]byte, 32))
		}
		if e.EscrowStanza() != len(e.Header.Stanzas)-1 {
			t.Fatal("escrow stanza not last")
		}
	})
}

func FuzzParseText(f *testing.F) {
	f.Add("")
	f.Add(envelope.TextPrefix)
	f.Fuzz(func(t *testing.T, s string) {
		e, err := envelope.ParseText(s)
		if err != nil {
			if !isSentinel(err) {
				t.Fatalf("error without a sentinel: %v", err)
			}
			return
		}
		if got := e.Text(); got != s {
			t.Fatalf("ParseText accepted a non-canonical text form:\n in  %q\n out %q", s, got)
		}
		if !strings.HasPrefix(s, envelope.TextPrefix) {
			t.Fatal("accepted text without the prefix")
		}
	})
}

// FuzzIsCanonicalJSON: the scan and the canonicalizer agree on every input.
func FuzzIsCanonicalJSON(f *testing.F) {
	for _, c := range canonicalCases {
		if len(c.in) < 4096 {
			f.Add([]byte(c.in))
			f.Add([]byte(c.want))
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := envelope.CanonicalJSON(b)
		want := err == nil && bytes.Equal(c, b)
		if got := envelope.IsCanonicalJSON(b); got != want {
			t.Fatalf("IsCanonicalJSON(%q) = %v; CanonicalJSON gives %q, %v", b, got, c, err)
		}
	})
}

func FuzzCanonicalJSON(f *testing.F) {
	for _, c := range canonicalCases {
		if len(c.in) < 4096 {
			f.Add([]byte(c.in))
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := envelope.CanonicalJSON(b)
		if err != nil {
			if !errors.Is(err, envelope.ErrInvalidJSON) && !errors.Is(err, envelope.ErrTooLarge) {
				t.Fatalf("error without a sentinel: %v", err)
			}
			return
		}
		if len(c) > len(b) {
			t.Fatalf("canonical form longer than input: %q -> %q", b, c)
		}
		again, err := envelope.CanonicalJSON(c)
		if err != nil || !bytes.Equal(again, c) {
			t.Fatalf("not idempotent: %q -> %q -> %q, %v", b, c, again, err)
		}
		var x, y any
		if err := json.Unmarshal(b, &x); err != nil {
			t.Fatalf("accepted invalid JSON %q: %v", b, err)
		}
		if err := json.Unmarshal(c, &y); err != nil {
			t.Fatalf("produced invalid JSON %q: %v", c, err)
		}
		if !reflect.DeepEqual(x, y) {
			t.Fatalf("meaning changed: %q -> %q", b, c)
		}
	})
}

// FuzzParseV2 checks the version-2 rules on whatever Parse accepts as a
// version-2 envelope: field names valid, strictly increasing, one
// ciphertext each; every field can be asked of the device; and the bytes
// re-marshal identically.
func FuzzParseV2(f *testing.F) {
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := envelope.Parse(b)
		if err != nil {
			if !isSentinel(err) {
				t.Fatalf("error without a sentinel: %v", err)
			}
			return
		}
		if got := e.Marshal(); !bytes.Equal(got, b) {
			t.Fatalf("Parse accepted bytes that do not re-marshal identically")
		}
		h := &e.Header
		if h.Version != envelope.Version2 {
			if h.SealedBy != "" || h.FieldNames != nil || e.Fields != nil {
				t.Fatal("version 1 with version-2 members")
			}
			if _, err := e.OpenFieldsRequest(0, "k", make([]byte, 32), []int{0}); !errors.Is(err, envelope.ErrVersion) {
				t.Fatalf("OpenFieldsRequest on v1: %v", err)
			}
			return
		}
		if envelope.ValidateID(h.SealedBy) != nil || len(h.FieldNames) == 0 || len(h.FieldNames) > envelope.MaxFields || len(e.Fields) != len(h.FieldNames) || e.Nonce != nil {
			t.Fatalf("v2 header accepted against the rules: %+v", h)
		}
		idx := make([]int, len(h.FieldNames))
		for i, n := range h.FieldNames {
			if envelope.ValidFieldName(n) != nil || (i > 0 && n <= h.FieldNames[i-1]) || e.FieldIndex(n) != i {
				t.Fatalf("field name %d %q accepted against the rules", i, n)
			}
			idx[i] = i
		}
		req, err := e.OpenFieldsRequest(e.EscrowStanza(), "k", make([]byte, 65), idx)
		if err != nil || len(req.Fields) != len(idx) {
			t.Fatalf("OpenFieldsRequest: %v", err)
		}
	})
}

// FuzzSplitFields: whatever SplitFields accepts is 1..MaxFields valid,
// sorted, unique names whose values are canonical JSON, and rebuilding the
// object from them gives CanonicalJSON of the input.
func FuzzSplitFields(f *testing.F) {
	f.Add([]byte(`{"a":1}`))
	f.Add([]byte(`{}`))
	f.Add([]byte(`{"a":1,"a":2}`))
	f.Add([]byte("{\"\xff\":1}"))
	f.Fuzz(func(t *testing.T, b []byte) {
		fs, err := envelope.SplitFields(b)
		if err != nil {
			if !errors.Is(err, envelope.ErrInvalidInput) && !errors.Is(err, envelope.ErrTooLarge) {
				t.Fatalf("error without a sentinel: %v", err)
			}
			return
		}
		if len(fs) == 0 || len(fs) > envelope.MaxFields {
			t.Fatalf("%d fields", len(fs))
		}
		var rebuilt bytes.Buffer
		rebuilt.WriteByte('{')
		for i, fl := range fs {
			if envelope.ValidFieldName(fl.Name) != nil || (i > 0 && fl.Name <= fs[i-1].Name) {
				t.Fatalf("field %q", fl.Name)
			}
			if i > 0 {
				rebuilt.WriteByte(',')
			}
			name, _ := json.Marshal(fl.Name)
			rebuilt.Write(name)
			rebuilt.WriteByte(':')
			rebuilt.Write(fl.Value)
		}
		rebuilt.WriteByte('}')
		c, err := envelope.CanonicalJSON(b)
		if err != nil {
			t.Fatal(err)
		}
		if again, err := envelope.CanonicalJSON(rebuilt.Bytes()); err != nil || !bytes.Equal(again, c) {
			t.Fatalf("fields do not rebuild the object: %s vs %s (%v)", rebuilt.Bytes(), c, err)
		}
	})
}
