package auditlog

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/tlog"
)

// refHashes is tlog's own stored-hash list, built with tlog.StoredHashes.
type refHashes []tlog.Hash

func (r refHashes) ReadHashes(idx []int64) ([]tlog.Hash, error) {
	out := make([]tlog.Hash, len(idx))
	for i, x := range idx {
		out[i] = r[x]
	}
	return out, nil
}

// TestTreeMatchesTlog: a tree, in memory and in a file written out every 5
// hashes, stores exactly tlog.StoredHashes' hashes, and its roots and
// inclusion proofs are tlog's.
func TestTreeMatchesTlog(t *testing.T) {
	inFile, err := newFileColumn(t.TempDir(), tlog.HashSize)
	if err != nil {
		t.Fatal(err)
	}
	defer inFile.close()
	inFile.flushAt = 5 * tlog.HashSize
	trees := map[string]*tree{"memory": {}, "file": {hashes: inFile}}
	var ref refHashes
	for i := range 1100 {
		leaf := []byte(strings.Repeat("x", i%7) + string(rune('a'+i%26)))
		hs, err := tlog.StoredHashes(int64(i), leaf, ref)
		if err != nil {
			t.Fatal(err)
		}
		ref = append(ref, hs...)
		for _, tr := range trees {
			tr.append(leaf)
		}
	}
	if trees["file"].hashes.flushed == 0 {
		t.Fatal("the file-backed tree wrote nothing to its file")
	}
	for name, tr := range trees {
		if tr.n != 1100 || tr.hashes.len() != int64(len(ref)) {
			t.Fatalf("%s: %d leaves, %d hashes; tlog 1100, %d", name, tr.n, tr.hashes.len(), len(ref))
		}
		got, err := tr.ReadHashes(func() (idx []int64) {
			for i := range ref {
				idx = append(idx, int64(i))
			}
			return idx
		}())
		if err != nil {
			t.Fatal(err)
		}
		for i := range ref {
			if got[i] != ref[i] {
				t.Fatalf("%s: stored hash %d differs", name, i)
			}
		}
		for _, size := range []int64{0, 1, 2, 3, 7, 8, 9, 1023, 1024, 1025, 1100} {
			want, _ := tlog.TreeHash(size, ref)
			if got, err := tr.root(size); err != nil || got != want {
				t.Fatalf("%s: root of %d differs (%v)", name, size, err)
			}
		}
		for _, idx := range []int64{0, 5, 511, 1099} {
			p, err := proveInclusion(tr, idx, 1100)
			if err != nil || p.Check() != nil {
				t.Fatalf("%s: inclusion of %d: %v / %v", name, idx, err, p.Check())
			}
		}
	}
	if _, err := trees["file"].ReadHashes([]int64{int64(len(ref))}); !errors.Is(err, ErrRange) {
		t.Fatalf("hash past the end: %v, want ErrRange", err)
	}
}

// TestColumnWriteFails: when the index file cannot be written (disk full),
// records stay in memory and read back; nothing is lost.
func TestColumnWriteFails(t *testing.T) {
	p := t.TempDir() + "/ro"
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(p) // read-only: every WriteAt fails
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	c := column{size: 8, f: f, flushAt: 16}
	for i := range 10 {
		c.append(binary.BigEndian.AppendUint64(nil, uint64(i)))
	}
	if c.len() != 10 || c.flushed != 0 {
		t.Fatalf("len %d, flushed %d", c.len(), c.flushed)
	}
	var b [8]byte
	for i := range int64(10) {
		if err := c.at(i, b[:]); err != nil || binary.BigEndian.Uint64(b[:]) != uint64(i) {
			t.Fatalf("record %d: %v %x", i, err, b)
		}
	}
}

// chunkReader returns at most a random few bytes per Read, so that lines
// straddle every kind of boundary.
type chunkReader struct {
	r   io.Reader
	rnd *rand.Rand
	max int
}

func (c *chunkReader) Read(p []byte) (int, error) {
	n := 1 + c.rnd.IntN(c.max)
	return c.r.Read(p[:min(len(p), n)])
}

// refScan is what scanLeaves must report for data: every '\n'-terminated
// line, hashed whole and parsed by ParseEntry; the rest is torn.
func refScan(data []byte) (leaves []leaf, sum scanSummary) {
	off := 0
	for {
		nl := bytes.IndexByte(data[off:], '\n')
		if nl < 0 {
			sum.torn = int64(len(data) - off)
			return leaves, sum
		}
		line := data[off : off+nl]
		idx, _, err := ParseEntry(line, -1)
		leaves = append(leaves, leaf{off: int64(off), line: line, hash: tlog.RecordHash(line), idx: idx, err: err})
		off += nl + 1
		sum.n++
		sum.end = int64(off)
	}
}

func checkScan(t *testing.T, name string, data []byte, r io.Reader) {
	t.Helper()
	want, wantSum := refScan(data)
	var got []leaf
	sum, err := scanLeaves(r, scanOptions{}, func(i int64, l *leaf) error {
		if i != int64(len(got)) {
			t.Fatalf("%s: leaf %d reported as %d", name, len(got), i)
		}
		c := *l
		c.line = bytes.Clone(l.line)
		got = append(got, c)
		return nil
	})
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	if sum != wantSum || len(got) != len(want) {
		t.Fatalf("%s: %+v, %d leaves; want %+v, %d", name, sum, len(got), wantSum, len(want))
	}
	for i, w := range want {
		g := got[i]
		head := w.line
		if len(head) > scanBuf-1 { // a line longer than a batch: its head is kept
			head = head[:MaxEntryBytes+1]
		}
		if g.off != w.off || g.hash != w.hash || !bytes.Equal(g.line, head) ||
			(g.err == nil) != (w.err == nil) || (g.err != nil && g.err.Error() != w.err.Error()) || (g.err == nil && g.idx != w.idx) {
			t.Fatalf("%s: leaf %d: got off %d len %d err %v idx %d; want off %d len %d err %v idx %d",
				name, i, g.off, len(g.line), g.err, g.idx, w.off, len(w.line), w.err, w.idx)
		}
	}
}

// TestScanLeaves: scanLeaves against a plain split of the file, with
// reads of every size, lines longer than a batch, empty lines and torn
// tails.
func TestScanLeaves(t *testing.T) {
	var good []byte
	t0 := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	for i := range 5000 {
		b, err := EncodeEntry(int64(i), Entry{Time: t0.Add(time.Duration(i) * time.Second), Operation: "decrypt",
			Outcome: Allowed, Detail: strings.Repeat("d", i%300), Participants: []string{"é"}})
		if err != nil {
			t.Fatal(err)
		}
		good = append(append(good, b...), '\n')
	}
	huge := bytes.Repeat([]byte("h"), 3*scanBuf+17)
	justOver := bytes.Repeat([]byte("j"), MaxEntryBytes+5)
	cases := map[string][]byte{
		"empty":          nil,
		"newline":        []byte("\n"),
		"good":           good,
		"torn":           append(bytes.Clone(good), good[:100]...),
		"garbage":        append(append(bytes.Clone(good[:len(good)/2]), "garbage\n\n{}\n"...), good[len(good)/2:]...),
		"huge-middle":    append(append(append(bytes.Clone(good[:len(good)/3]), huge...), '\n'), good[len(good)/3:]...),
		"huge-torn":      append(bytes.Clone(good), huge...),
		"huge-exact":     append(bytes.Repeat([]byte("e"), scanBuf), '\n'),
		"huge-1":         append(bytes.Repeat([]byte("e"), scanBuf-1), '\n'),
		"just-over":      append(append(append(bytes.Clone(good[:1000]), justOver...), '\n'), good[1000:]...),
		"max-torn":       bytes.Repeat([]byte("m"), scanBuf),
		"two-huge":       append(append(append(bytes.Clone(huge), '\n'), huge...), "\nx\n"...),
		"huge-then-torn": append(append(bytes.Clone(huge), '\n'), "partial"...),
	}
	rnd := rand.New(rand.NewPCG(1, 2))
	for name, data := range cases {
		checkScan(t, name, data, bytes.NewReader(data))
		checkScan(t, name+"/small-reads", data, &chunkReader{r: bytes.NewReader(data), rnd: rnd, max: 70000})
	}
	// A good log's leaves decode to ReadEntries' entries.
	sum, err := scanLeaves(bytes.NewReader(good), scanOptions{entries: true}, func(i int64, l *leaf) error {
		_, e, err := ParseEntry(l.line, i)
		if err != nil || l.err != nil || l.e.Detail != e.Detail || !l.e.Time.Equal(e.Time) || l.e.Participants[0] != "é" {
			t.Fatalf("entry %d: %+v %v", i, l.e, err)
		}
		return nil
	})
	if err != nil || sum.n != 5000 {
		t.Fatal(sum, err)
	}
}

// TestScanLeavesStop: an error from fn stops the scan and is returned;
// a read error is returned.
func TestScanLeavesStop(t *testing.T) {
	data := bytes.Repeat([]byte(strings.Repeat("l", 999)+"\n"), 5000) // five batches
	stop := errors.New("stop")
	seen := 0
	_, err := scanLeaves(bytes.NewReader(data), scanOptions{}, func(i int64, l *leaf) error {
		seen++
		if i == 10 {
			return stop
		}
		return nil
	})
	if err != stop || seen != 11 {
		t.Fatalf("%v after %d", err, seen)
	}
	bad := errors.New("disk")
	_, err = scanLeaves(io.MultiReader(bytes.NewReader(data[:3_000_500]), errReader{bad}), scanOptions{}, func(int64, *leaf) error { return nil })
	if err != bad {
		t.Fatalf("read error: %v", err)
	}
}

type errReader struct{ err error }

func (r errReader) Read([]byte) (int, error) { return 0, r.err }
