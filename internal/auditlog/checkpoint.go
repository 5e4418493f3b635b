package auditlog

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

// Checkpoint is a signed statement of the log's size and root hash, in the
// C2SP tlog-checkpoint format inside a C2SP signed note:
//
//	<origin>\n<size>\n<base64 root hash>\n\n— <key name> <base64 key hash||signature>\n
type Checkpoint struct {
	Origin string
	Size   int64
	Root   tlog.Hash
	Note   []byte // the signed note, as published
}

// ErrCheckpoint: a checkpoint that does not parse or whose signature does
// not verify with the log's key.
var ErrCheckpoint = errors.New("auditlog: invalid checkpoint")

// checkpointBody is the note text of a checkpoint.
func checkpointBody(origin string, size int64, root tlog.Hash) string {
	return fmt.Sprintf("%s\n%d\n%s\n", origin, size, base64.StdEncoding.EncodeToString(root[:]))
}

// parseCheckpointBody parses the text of a tlog-checkpoint: origin, decimal
// size, base64 root; extension lines after those are allowed and ignored.
func parseCheckpointBody(text string) (origin string, size int64, root tlog.Hash, err error) {
	lines := strings.SplitAfter(text, "\n")
	if len(lines) < 4 || lines[len(lines)-1] != "" {
		return "", 0, root, fmt.Errorf("%w: want origin, size and root lines", ErrCheckpoint)
	}
	origin = strings.TrimSuffix(lines[0], "\n")
	if origin == "" {
		return "", 0, root, fmt.Errorf("%w: empty origin", ErrCheckpoint)
	}
	s := strings.TrimSuffix(lines[1], "\n")
	size, err = strconv.ParseInt(s, 10, 64)
	if err != nil || size < 0 || strconv.FormatInt(size, 10) != s {
		return "", 0, root, fmt.Errorf("%w: bad size %q", ErrCheckpoint, s)
	}
	r, err := base64.StdEncoding.Strict().DecodeString(strings.TrimSuffix(lines[2], "\n"))
	if err != nil || len(r) != tlog.HashSize {
		return "", 0, root, fmt.Errorf("%w: bad root hash", ErrCheckpoint)
	}
	copy(root[:], r)
	return origin, size, root, nil
}

// OpenCheckpoint verifies a signed checkpoint with v and parses it. The
// origin must be the verifier's name.
func OpenCheckpoint(msg []byte, v note.Verifier) (Checkpoint, error) {
	n, err := note.Open(msg, note.VerifierList(v))
	if err != nil {
		return Checkpoint{}, fmt.Errorf("%w: %v", ErrCheckpoint, err)
	}
	origin, size, root, err := parseCheckpointBody(n.Text)
	if err != nil {
		return Checkpoint{}, err
	}
	if origin != v.Name() {
		return Checkpoint{}, fmt.Errorf("%w: origin %q is not the key's name %q", ErrCheckpoint, origin, v.Name())
	}
	return Checkpoint{Origin: origin, Size: size, Root: root, Note: bytes.Clone(msg)}, nil
}

// Device signs with an Ed25519 key it holds; *hsm.Token implements it with
// CKM_EDDSA. The private key never leaves the device.
type Device interface {
	SignEd25519(ctx context.Context, label string, msg []byte) ([]byte, error)
}

// KeyStore is a Device that can also find or create its Ed25519 key;
// *hsm.Token implements it.
type KeyStore interface {
	Device
	EnsureEd25519(ctx context.Context, label string, created time.Time) (ed25519.PublicKey, bool, error)
}

// SignTimeout bounds one checkpoint signature on the device.
const SignTimeout = 10 * time.Second

// algEd25519 is the signed-note signature type byte of Ed25519.
const algEd25519 = 1

// keyHash is the signed-note key hash: the first four bytes of
// SHA-256(name || "\n" || 0x01 || public key), big-endian.
func keyHash(name string, pub ed25519.PublicKey) uint32 {
	h := sha256.New()
	h.Write([]byte(name))
	h.Write([]byte("\n"))
	h.Write([]byte{algEd25519})
	h.Write(pub)
	return binary.BigEndian.Uint32(h.Sum(nil))
}

// VerifierKey is the signed-note verifier key string of an Ed25519 public
// key, "<name>+<hex key hash>+<base64(0x01||key)>", as note.NewVerifier
// reads it. The log writes it to log.pub.
func VerifierKey(name string, pub ed25519.PublicKey) string {
	return fmt.Sprintf("%s+%08x+%s", name, keyHash(name, pub),
		base64.StdEncoding.EncodeToString(append([]byte{algEd25519}, pub...)))
}

// DeviceSigner is a note.Signer whose Ed25519 key is on a Device.
type DeviceSigner struct {
	name  string
	label string
	pub   ed25519.PublicKey
	hash  uint32
	dev   Device
}

// NewDeviceSigner returns a note.Signer named name (the log's origin) that
// signs with the device key labelled label, whose public key is pub.
func NewDeviceSigner(name, label string, pub ed25519.PublicKey, dev Device) (*DeviceSigner, error) {
	if !isKeyName(name) {
		return nil, fmt.Errorf("auditlog: %q is not a valid signed-note key name", name)
	}
	if len(pub) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("auditlog: Ed25519 public key of %d bytes", len(pub))
	}
	return &DeviceSigner{name: name, label: label, pub: pub, hash: keyHash(name, pub), dev: dev}, nil
}

// EnsureDeviceSigner finds the Ed25519 key labelled label on ks, or creates
// it (first start), and returns a DeviceSigner named origin over it.
func EnsureDeviceSigner(ctx context.Context, ks KeyStore, origin, label string, now time.Time) (*DeviceSigner, bool, error) {
	pub, created, err := ks.EnsureEd25519(ctx, label, now)
	if err != nil {
		return nil, false, fmt.Errorf("auditlog: checkpoint key %q: %w", label, err)
	}
	s, err := NewDeviceSigner(origin, label, pub, ks)
	return s, created, err
}

// Name implements note.Signer.
func (s *DeviceSigner) Name() string { return s.name }

// KeyHash implements note.Signer.
func (s *DeviceSigner) KeyHash() uint32 { return s.hash }

// Public is the signer's Ed25519 public key.
func (s *DeviceSigner) Public() ed25519.PublicKey { return s.pub }

// VerifierKey is the verifier key string reviewers use.
func (s *DeviceSigner) VerifierKey() string { return VerifierKey(s.name, s.pub) }

// Sign implements note.Signer: Ed25519 on the device, bounded by SignTimeout.
func (s *DeviceSigner) Sign(msg []byte) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), SignTimeout)
	defer cancel()
	sig, err := s.dev.SignEd25519(ctx, s.label, msg)
	if err != nil {
		return nil, err
	}
	// Never publish a signature reviewers could not verify.
	if !ed25519.Verify(s.pub, msg, sig) {
		return nil, fmt.Errorf("auditlog: the device's signature does not verify with key %q", s.label)
	}
	return sig, nil
}

// isKeyName is note's rule for key names: non-empty, no Unicode spaces, no "+".
func isKeyName(name string) bool {
	return name != "" && !strings.ContainsAny(name, "+ \t\n\r\v\f\u0085\u00a0") && strings.IndexFunc(name, func(r rune) bool { return r < 0x20 || r == 0x7f }) < 0
}

// SoftwareSigner is a note.Signer with an in-memory Ed25519 key, for tests
// and benchmarks; the daemon uses a DeviceSigner.
type SoftwareSigner struct {
	name string
	priv ed25519.PrivateKey
}

// NewSoftwareSigner returns a SoftwareSigner named name.
func NewSoftwareSigner(name string, priv ed25519.PrivateKey) *SoftwareSigner {
	return &SoftwareSigner{name: name, priv: priv}
}

func (s *SoftwareSigner) Name() string { return s.name }
func (s *SoftwareSigner) KeyHash() uint32 {
	return keyHash(s.name, s.priv.Public().(ed25519.PublicKey))
}
func (s *SoftwareSigner) Sign(msg []byte) ([]byte, error) { return ed25519.Sign(s.priv, msg), nil }
func (s *SoftwareSigner) VerifierKey() string {
	return VerifierKey(s.name, s.priv.Public().(ed25519.PublicKey))
}

// ReadVerifierKey reads a verifier key file (log.pub): one line, the
// note.NewVerifier string.
func ParseVerifierKey(b []byte) (note.Verifier, error) {
	v, err := note.NewVerifier(strings.TrimSpace(string(b)))
	if err != nil {
		return nil, fmt.Errorf("auditlog: verifier key: %w", err)
	}
	return v, nil
}
