package envelope

import "fmt"

// ValidateID reports whether id may name a participant, transaction, job or
// signing key: 1 to MaxIDLength bytes of [A-Za-z0-9._:-], the first one a
// letter or digit. It returns nil or an error matching ErrInvalidID.
func ValidateID(id string) error {
	if len(id) == 0 || len(id) > MaxIDLength {
		return fmt.Errorf("%w: length %d, want 1..%d", ErrInvalidID, len(id), MaxIDLength)
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		alnum := 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'
		if alnum || i > 0 && (c == '.' || c == '_' || c == ':' || c == '-') {
			continue
		}
		return fmt.Errorf("%w: byte %d (%q) not allowed", ErrInvalidID, i, c)
	}
	return nil
}
