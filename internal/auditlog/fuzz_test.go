package auditlog_test

import (
	"bytes"
	"context"
	"testing"

	"golang.org/x/mod/sumdb/note"

	"custody/internal/auditlog"
)

// FuzzParseEntry: the parser never panics, and whatever it accepts
// re-encodes to exactly the same bytes (one entry, one leaf hash).
func FuzzParseEntry(f *testing.F) {
	for i := range 8 {
		b, _ := auditlog.EncodeEntry(int64(i), entry(i))
		f.Add(b, int64(i))
	}
	f.Add([]byte(`{"v":1,"i":0,"time":"2026-11-25T12:00:00Z","op":"x","caller":{"uid":0,"gid":0,"pid":0},"outcome":"allowed"}`), int64(0))
	f.Add([]byte(`{"v":2}`), int64(0))
	f.Add([]byte(`{"v":1,"i":0,"i":1}`), int64(-1))
	f.Add([]byte("{}\n"), int64(0))
	f.Fuzz(func(t *testing.T, b []byte, index int64) {
		i, e, err := auditlog.ParseEntry(b, index)
		if err != nil {
			return
		}
		again, err := auditlog.EncodeEntry(i, e)
		if err != nil || !bytes.Equal(again, b) {
			t.Fatalf("accepted %q but re-encodes to %q (%v)", b, again, err)
		}
	})
}

// FuzzOpenCheckpoint: checkpoint parsing never panics, and an accepted
// checkpoint carries a valid signature of its own text.
func FuzzOpenCheckpoint(f *testing.F) {
	dir := f.TempDir()
	l, err := auditlog.Open(context.Background(), testConfig(dir), testSigner(), nil)
	if err != nil {
		f.Fatal(err)
	}
	for i := range 3 {
		l.Record(context.Background(), entry(i))
	}
	l.Close()
	cp := readFile(f, dir, auditlog.CheckpointFile)
	f.Add(cp)
	f.Add(bytes.Replace(cp, []byte("\n3\n"), []byte("\n03\n"), 1))
	f.Add([]byte("custody.test/log\n1\nAAAA\n\n— custody.test/log AAAA\n"))
	f.Add(readFile(f, dir, auditlog.CheckpointsFile))
	s := testSigner()
	v, err := note.NewVerifier(s.VerifierKey())
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := auditlog.OpenCheckpoint(b, v)
		if err != nil {
			return
		}
		if c.Origin != testOrigin || c.Size < 0 {
			t.Fatalf("accepted %+v", c)
		}
	})
}
