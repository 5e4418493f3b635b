package ceremony

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"strconv"
	"strings"

	"filippo.io/age"
)

// ShareKind says what secret a share is a part of.
type ShareKind int

const (
	// KEKShare is a part of a backup's KEK ("custody-share v1"; its set is
	// the backup, named by the manifest's backup id).
	KEKShare ShareKind = iota
	// SOPINShare is a part of a token's security officer PIN
	// ("custody-so-pin-share v1"; its set is the SO PIN record's set id,
	// made by custodyd token init).
	SOPINShare
)

func (k ShareKind) String() string {
	if k == SOPINShare {
		return "SO PIN share"
	}
	return "backup share"
}

// Share is one officer's part of a 32-byte secret: a backup KEK or a
// token's SO PIN (plaintext form, after age decryption). Its text form
// (Text, ParseShare), for a KEK share:
//
//	custody-share v1
//	backup <32 hex>
//	index <1..255>
//	threshold <M>
//	total <N>
//	officer <name>
//	value <64 hex>
//
// and for an SO PIN share the same with the first lines
// "custody-so-pin-share v1" and "set <32 hex>". value is the Shamir
// y-coordinates (GF(2^8), AES polynomial, x = index) of the secret.
type Share struct {
	Kind      ShareKind
	BackupID  string // the set: a backup id, or an SO PIN record's set id
	Index     int
	Threshold int
	Total     int
	Officer   string
	Value     []byte // 32 bytes; secret
}

// The first line and the set field of each kind.
var shareMagic = [...]struct{ magic, set, commitment string }{
	KEKShare:   {"custody-share v1", "backup", "custody/share-commitment/v1\x00"},
	SOPINShare: {"custody-so-pin-share v1", "set", "custody/so-pin-share-commitment/v1\x00"},
}

// Text encodes s. The result is secret.
func (s Share) Text() []byte {
	k := shareMagic[s.Kind]
	return fmt.Appendf(nil, "%s\n%s %s\nindex %d\nthreshold %d\ntotal %d\nofficer %s\nvalue %s\n",
		k.magic, k.set, s.BackupID, s.Index, s.Threshold, s.Total, s.Officer, hex.EncodeToString(s.Value))
}

// ParseShare parses a share's text, of either kind, strictly (ErrFormat).
func ParseShare(b []byte) (Share, error) {
	bad := func(f string, a ...any) (Share, error) {
		return Share{}, fmt.Errorf("%w: share: %s", ErrFormat, fmt.Sprintf(f, a...))
	}
	if len(b) > 1024 {
		return bad("too large")
	}
	lines := strings.Split(string(b), "\n")
	var s Share
	switch {
	case len(lines) != 8 || lines[7] != "":
		return bad("not a share file of 7 lines")
	case lines[0] == shareMagic[KEKShare].magic:
		s.Kind = KEKShare
	case lines[0] == shareMagic[SOPINShare].magic:
		s.Kind = SOPINShare
	default:
		return bad("first line is not %q or %q", shareMagic[KEKShare].magic, shareMagic[SOPINShare].magic)
	}
	names := []string{shareMagic[s.Kind].set, "index", "threshold", "total", "officer", "value"}
	vals := make([]string, len(names))
	for i, n := range names {
		v, ok := strings.CutPrefix(lines[i+1], n+" ")
		if !ok {
			return bad("line %d: want %q", i+2, n)
		}
		vals[i] = v
	}
	s.BackupID, s.Officer = vals[0], vals[4]
	if !hexIDRe.MatchString(s.BackupID) {
		return bad("bad %s id", names[0])
	}
	if !officerNameRe.MatchString(s.Officer) {
		return bad("bad officer name")
	}
	for i, p := range []*int{&s.Index, &s.Threshold, &s.Total} {
		n, err := strconv.Atoi(vals[1+i])
		if err != nil || n < 1 || n > 255 || strconv.Itoa(n) != vals[1+i] {
			return bad("bad %s", names[1+i])
		}
		*p = n
	}
	if s.Threshold < 2 || s.Threshold > s.Total || s.Index > s.Total {
		return bad("index %d, threshold %d, total %d inconsistent", s.Index, s.Threshold, s.Total)
	}
	v, err := hex.DecodeString(vals[5])
	if err != nil || len(v) != 32 || hex.EncodeToString(v) != vals[5] {
		return bad("value must be 64 lowercase hex digits")
	}
	s.Value = v
	return s, nil
}

// Commitment binds a share to its set: SHA-256 of a domain label (one per
// kind), the set id, the index and the value. The public record of the set
// (manifest, SO PIN record) lists one per share so the daemon can name a
// corrupted share; a 256-bit hash of a 256-bit random-looking value reveals
// nothing useful about it.
func (s Share) Commitment() string {
	h := sha256.New()
	h.Write([]byte(shareMagic[s.Kind].commitment))
	h.Write([]byte(s.BackupID))
	h.Write(binary.BigEndian.AppendUint16(nil, uint16(s.Index)))
	h.Write(s.Value)
	return hex.EncodeToString(h.Sum(nil))
}

// EncryptShare encrypts s's text to one age recipient (binary age format).
func EncryptShare(s Share, r age.Recipient) ([]byte, error) {
	var buf bytes.Buffer
	w, err := age.Encrypt(&buf, r)
	if err != nil {
		return nil, fmt.Errorf("ceremony: age encrypt: %w", err)
	}
	t := s.Text()
	defer clear(t)
	if _, err := w.Write(t); err != nil {
		return nil, err
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// DecryptShare decrypts an age-encrypted share file with identity and
// parses it. A file for another identity or a modified file is ErrFormat
// (age authenticates its payload).
func DecryptShare(file []byte, id age.Identity) (Share, error) {
	r, err := age.Decrypt(bytes.NewReader(file), id)
	if err != nil {
		return Share{}, fmt.Errorf("%w: share file does not decrypt with this identity: %v", ErrFormat, err)
	}
	b, err := io.ReadAll(io.LimitReader(r, 2048))
	if err != nil {
		return Share{}, fmt.Errorf("%w: share file: %v", ErrFormat, err)
	}
	defer clear(b)
	return ParseShare(b)
}
