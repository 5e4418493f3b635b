//go:build cgo

package hsm

import (
	"bytes"
	"fmt"
	"os"
)

// readPINFile reads a PIN from path. It refuses (ErrPINFile) a file that is
// missing, not a regular file, empty, or has any group or other permission
// bit. One trailing newline (LF or CRLF) is trimmed. The caller owns the
// returned bytes and should clear them when done.
func readPINFile(path string) ([]byte, error) {
	if path == "" {
		return nil, fmt.Errorf("%w: no PIN file configured", ErrPINFile)
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrPINFile, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrPINFile, err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%w: %s is not a regular file", ErrPINFile, path)
	}
	if perm := st.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("%w: %s has mode %04o; group and others must have no access (chmod 0400)", ErrPINFile, path, perm)
	}
	var buf bytes.Buffer
	buf.Grow(int(min(st.Size(), 1024)) + 1)
	if _, err := buf.ReadFrom(f); err != nil {
		clear(buf.Bytes())
		return nil, fmt.Errorf("%w: reading %s: %v", ErrPINFile, path, err)
	}
	raw := buf.Bytes()
	pin := bytes.TrimSuffix(raw, []byte("\n"))
	pin = bytes.TrimSuffix(pin, []byte("\r"))
	if len(pin) == 0 {
		clear(raw)
		return nil, fmt.Errorf("%w: %s is empty", ErrPINFile, path)
	}
	out := bytes.Clone(pin)
	clear(raw)
	return out, nil
}
