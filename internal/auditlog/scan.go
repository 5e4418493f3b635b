package auditlog

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"hash"
	"io"
	"runtime"
	"sync"

	"golang.org/x/mod/sumdb/tlog"
)

// Reading the entries file: a reader goroutine cuts it into batches of
// whole lines, GOMAXPROCS workers parse (strictly, ParseEntry) and
// leaf-hash the lines of a batch, and the caller's goroutine gets the
// results in file order. Verify, Prove, ReadEntries and Open share it.

// leaf is one complete line of the entries file, as scanLeaves reports it.
type leaf struct {
	off  int64     // offset of its first byte
	line []byte    // without its '\n'; valid during the callback only; cut at MaxEntryBytes+1 if longer
	hash tlog.Hash // tlog.RecordHash of the whole line
	idx  int64     // the index it claims, when err is nil
	err  error     // ParseEntry(line, -1)'s error
	e    Entry     // the entry, when err is nil and scanOptions.entries
}

type scanOptions struct {
	entries bool // decode leaf.e
}

// scanSummary describes the file after a complete scan.
type scanSummary struct {
	n    int64 // complete lines
	end  int64 // offset after the last complete line
	torn int64 // bytes of an incomplete last line (no '\n')
}

const (
	scanChunk = 1 << 20                       // bytes read per batch (about 2000 entries)
	scanBuf   = scanChunk + MaxEntryBytes + 2 // a batch's buffer: a carried partial line plus a chunk
)

type scanBatch struct {
	base   int64  // file offset of buf[0]
	buf    []byte // whole lines, each ending in '\n'
	leaves []leaf
	long   bool // one line longer than the buffer: hashed and judged by the reader
	rest   int  // long: buf[rest:] are the bytes read after its '\n'
	done   chan struct{}
}

// scanLeaves reads r (an entries file from its start) and calls fn for
// every complete line in order. fn's error stops the scan and is returned.
func scanLeaves(r io.Reader, opts scanOptions, fn func(i int64, l *leaf) error) (scanSummary, error) {
	workers := min(max(1, runtime.GOMAXPROCS(0)), 16) // a batch in flight is 1.3 MB
	inFlight := 2*workers + 2
	free := make(chan *scanBatch, inFlight)
	for range inFlight {
		free <- &scanBatch{buf: make([]byte, 0, scanBuf), done: make(chan struct{}, 1)}
	}
	work := make(chan *scanBatch, inFlight)
	ordered := make(chan *scanBatch, inFlight)
	quit := make(chan struct{})
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			h := sha256.New()
			for b := range work {
				b.process(h, opts)
				b.done <- struct{}{}
			}
		})
	}
	var (
		end, torn int64
		readErr   error
	)
	wg.Go(func() {
		defer close(ordered)
		defer close(work)
		end, torn, readErr = readBatches(r, free, quit, func(b *scanBatch) {
			ordered <- b // never blocks: at most inFlight batches exist
			if !b.long {
				work <- b
			} else {
				b.done <- struct{}{}
			}
		})
	})
	var (
		sum scanSummary
		err error
	)
	for b := range ordered {
		<-b.done
		for i := range b.leaves {
			if err == nil {
				err = fn(sum.n, &b.leaves[i])
				sum.n++
			}
		}
		b.buf = b.buf[:0]
		free <- b
		if err != nil {
			break
		}
	}
	close(quit)
	for range ordered { // the reader sends no more once quit is closed, but may be sending now
	}
	wg.Wait()
	if err != nil {
		return sum, err
	}
	sum.end, sum.torn = end, torn
	return sum, readErr
}

// readBatches fills batches from free with whole lines and hands them to
// emit in order. It returns the offset after the last complete line and
// the length of an incomplete last line.
func readBatches(r io.Reader, free chan *scanBatch, quit chan struct{}, emit func(*scanBatch)) (end, torn int64, err error) {
	carry := make([]byte, 0, scanBuf)
	var off int64 // file offset of carry[0]
	eof := false
	take := func() *scanBatch {
		select {
		case b := <-free:
			return b
		case <-quit:
			return nil
		}
	}
	for {
		b := take()
		if b == nil {
			return off, 0, nil
		}
		b.base, b.long, b.leaves = off, false, b.leaves[:0]
		b.buf = append(b.buf[:0], carry...)
		for !eof && len(b.buf) < cap(b.buf) {
			n, rerr := r.Read(b.buf[len(b.buf):cap(b.buf)])
			b.buf = b.buf[:len(b.buf)+n]
			if rerr == io.EOF {
				eof = true
			} else if rerr != nil {
				free <- b
				return off, 0, rerr
			}
		}
		last := bytes.LastIndexByte(b.buf, '\n')
		switch {
		case last >= 0:
			carry = append(carry[:0], b.buf[last+1:]...)
			b.buf = b.buf[:last+1]
			off += int64(len(b.buf))
			emit(b)
		case eof:
			// An incomplete last line (or nothing).
			free <- b
			return off, int64(len(b.buf)), nil
		default:
			// No '\n' in a full buffer: a line longer than any entry.
			// Hash it whole as it streams by; keep its head.
			n, complete, rerr := b.longLine(r)
			if rerr != nil {
				free <- b
				return off, 0, rerr
			}
			if !complete {
				free <- b
				return off, n, nil
			}
			carry = append(carry[:0], b.buf[b.rest:]...)
			off += n + 1
			emit(b)
		}
	}
}

// longLine handles a buffer that is full without a '\n': it reads on to
// the end of the line, hashing it, and sets b to the one leaf (its head
// kept in b.buf[:MaxEntryBytes+1]). The bytes read after the '\n' are
// left in b.buf[b.rest:]. n is the line's length
// without its '\n'; complete is false when the file ended first.
func (b *scanBatch) longLine(r io.Reader) (n int64, complete bool, err error) {
	h := sha256.New()
	h.Write([]byte{0})
	h.Write(b.buf)
	n = int64(len(b.buf))
	head := MaxEntryBytes + 1
	for {
		m, rerr := r.Read(b.buf[head:cap(b.buf)])
		chunk := b.buf[head : head+m]
		if i := bytes.IndexByte(chunk, '\n'); i >= 0 {
			h.Write(chunk[:i])
			n += int64(i)
			b.long = true
			var lh tlog.Hash
			h.Sum(lh[:0])
			b.leaves = append(b.leaves[:0], leaf{off: b.base, line: b.buf[:head], hash: lh,
				err: fmt.Errorf("%w: %d bytes", ErrMalformed, n)})
			b.buf = b.buf[:head+m]
			b.rest = head + i + 1
			return n, true, nil
		}
		h.Write(chunk)
		n += int64(m)
		if rerr == io.EOF {
			return n, false, nil
		}
		if rerr != nil {
			return n, false, rerr
		}
	}
}

// process parses and hashes every line of b.buf.
func (b *scanBatch) process(h hash.Hash, opts scanOptions) {
	buf := b.buf
	start := 0
	for start < len(buf) {
		nl := bytes.IndexByte(buf[start:], '\n')
		line := buf[start : start+nl : start+nl]
		l := leaf{off: b.base + int64(start), line: line}
		h.Reset()
		h.Write(zeroByte[:])
		h.Write(line)
		h.Sum(l.hash[:0])
		if i, e, ok := parseCanonical(line, opts.entries); ok {
			l.idx, l.e = i, e
		} else {
			l.idx, l.e, l.err = parseEntryJSON(line, -1) // ParseEntry, whose fast path just failed
			if !opts.entries {
				l.e = Entry{}
			}
		}
		b.leaves = append(b.leaves, l)
		start += nl + 1
	}
}

var zeroByte = [1]byte{0}
