//go:build cgo

package hsm

import (
	"bytes"
	"fmt"

	"custody/internal/safefile"
)

// MaxPINFile bounds a PIN file; a larger one is refused, not read.
const MaxPINFile = 1024

// readPINFile reads a PIN from path. It refuses (ErrPINFile) a file that is
// missing, not a regular file, owned by anyone but root or the daemon's
// effective uid, has any group or other permission bit, is empty, or is
// larger than MaxPINFile (safefile.ReadSecret; the wrapped error says
// which). One trailing newline (LF or CRLF) is trimmed. The caller owns the
// returned bytes and should clear them when done.
func readPINFile(path string) ([]byte, error) {
	if path == "" {
		return nil, fmt.Errorf("%w: no PIN file configured", ErrPINFile)
	}
	raw, err := safefile.ReadSecret(path, MaxPINFile)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrPINFile, err)
	}
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
