package auditlog

import (
	"fmt"
	"os"
)

// column is an append-only array of fixed-size records. With a file, the
// newest records stay in memory only until there are columnFlush bytes of
// them, then go to the file: memory stays bounded however many entries
// there are. Without a file (the zero column) every record stays in memory.
//
// The file is derived data, rebuilt from the entries file by whoever opens
// the log (Open, and the offline verify and prove), in an unlinked
// temporary file that disappears with the process, so it is never
// fsync'd and a crash cannot leave it stale. A failed write to it (disk
// full) keeps the records in memory and is tried again at the next flush;
// nothing is lost, only memory is spent until the disk has room.
//
// Not safe for concurrent use; Log guards it.
type column struct {
	size    int      // bytes per record
	f       *os.File // records [0, flushed); nil: all in memory
	flushed int64
	tail    []byte // records [flushed, len)
	flushAt int    // tail bytes that trigger a write; columnFlush when 0
}

// columnFlush is how many bytes of records a file-backed column keeps in
// memory before it writes them out.
const columnFlush = 256 << 10

// newFileColumn returns an empty column of size-byte records kept in an
// unlinked temporary file in dir.
func newFileColumn(dir string, size int) (column, error) {
	f, err := os.CreateTemp(dir, ".index-*")
	if err != nil {
		return column{}, fmt.Errorf("%w: index file: %v", ErrUnavailable, err)
	}
	if err := os.Remove(f.Name()); err != nil {
		f.Close()
		return column{}, fmt.Errorf("%w: index file: %v", ErrUnavailable, err)
	}
	return column{size: size, f: f}, nil
}

// len is the number of records.
func (c *column) len() int64 {
	if c.size == 0 {
		return 0
	}
	return c.flushed + int64(len(c.tail)/c.size)
}

// append adds one record of c.size bytes.
func (c *column) append(rec []byte) {
	c.tail = append(c.tail, rec...)
	flushAt := c.flushAt
	if flushAt == 0 {
		flushAt = columnFlush
	}
	if c.f != nil && len(c.tail) >= flushAt {
		if _, err := c.f.WriteAt(c.tail, c.flushed*int64(c.size)); err == nil {
			c.flushed += int64(len(c.tail) / c.size)
			c.tail = c.tail[:0]
		}
	}
}

// at copies record i into dst (c.size bytes).
func (c *column) at(i int64, dst []byte) error {
	if i < 0 || i >= c.len() {
		return fmt.Errorf("%w: record %d of %d", ErrRange, i, c.len())
	}
	if i >= c.flushed {
		copy(dst, c.tail[(i-c.flushed)*int64(c.size):])
		return nil
	}
	if _, err := c.f.ReadAt(dst[:c.size], i*int64(c.size)); err != nil {
		return fmt.Errorf("%w: reading the index: %v", ErrUnavailable, err)
	}
	return nil
}

// close releases the file (and with it the disk space).
func (c *column) close() {
	if c.f != nil {
		c.f.Close()
	}
}
