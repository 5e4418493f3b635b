package auditlog

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/tlog"
)

// TestAppendLeafHash: the tree built from leaf hashes stores exactly
// tlog.StoredHashes' hashes, and its roots are tlog's.
func TestAppendLeafHash(t *testing.T) {
	var ref, got tree
	for i := range 1100 {
		leaf := []byte(strings.Repeat("x", i%7) + string(rune('a'+i%26)))
		if err := ref.append(leaf); err != nil {
			t.Fatal(err)
		}
		got.appendLeafHash(tlog.RecordHash(leaf))
		if got.n != ref.n || len(got.hashes) != len(ref.hashes) {
			t.Fatalf("leaf %d: %d leaves, %d hashes; tlog %d, %d", i, got.n, len(got.hashes), ref.n, len(ref.hashes))
		}
	}
	for i := range ref.hashes {
		if got.hashes[i] != ref.hashes[i] {
			t.Fatalf("stored hash %d differs", i)
		}
	}
	for _, size := range []int64{0, 1, 2, 3, 7, 8, 9, 1023, 1024, 1025, 1100} {
		a, _ := ref.root(size)
		b, _ := got.root(size)
		if a != b {
			t.Fatalf("root of %d differs", size)
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
