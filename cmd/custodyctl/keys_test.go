package main

import (
	"path/filepath"
	"testing"
)

func TestStateRoundTrip(t *testing.T) {
	p := filepath.Join(t.TempDir(), "s")
	want := rewrapState{V: 1, In: "/x", InSize: 9, Done: 5, OutBytes: 100, Changed: 3, Unchanged: 1, Failed: 1}
	if err := writeState(p, want); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{`{"v":2,"in":"/x"}`, `{"v":1,"in":"/x","done":1,"changed":2}`, `{"v":1,"in":"/x","extra":1}`, `{"v":1,"in":"/x"} x`, `{"v":1,"in":"/x","done":-1}`} {
		if _, err := parseState([]byte(bad)); err == nil {
			t.Errorf("accepted %s", bad)
		}
	}
}

func FuzzParseState(f *testing.F) {
	f.Add([]byte(`{"v":1,"in":"/a/in.jsonl","in_size":10,"done":2,"out_bytes":30,"changed":1,"unchanged":1,"failed":0}`))
	f.Add([]byte(`{"v":1}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		st, err := parseState(b)
		if err != nil {
			return
		}
		if st.Changed+st.Unchanged+st.Failed > st.Done || st.V != 1 {
			t.Fatalf("accepted an inconsistent state %+v", st)
		}
	})
}
