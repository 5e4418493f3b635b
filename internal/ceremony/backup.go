package ceremony

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"time"

	"custody/hsm"
	"custody/internal/envelope"
	"custody/internal/shamir"
)

// Device is what a ceremony needs from the token (package hsm's *Token).
type Device interface {
	FindKey(ctx context.Context, label string) (hsm.KeyInfo, error)
	WrapForBackup(ctx context.Context, label, soPINFile string, kek []byte) ([]byte, error)
	RestoreFromBackup(ctx context.Context, label string, kek, wrapped, public []byte) (hsm.KeyInfo, error)
	DestroyKeyPair(ctx context.Context, label string) error
	Open(ctx context.Context, req hsm.OpenRequest) ([]byte, error)
}

// Algorithm names written into a Manifest.
const (
	ManifestFormat = "custody-backup v1"
	WrapAlg        = "CKM_AES_KEY_WRAP_PAD/PKCS8"  // the token's C_WrapKey output
	SplitAlg       = "shamir-gf256-0x11b"          // package shamir
	KCVAlg         = "AES-256-ECB(KEK, 0^128)[:3]" // the classic 3-byte key check value
	ShareAlg       = "age-x25519"                  // each share file
)

// Manifest is the backup's public output (wrapped-key file): everything
// restore needs but the shares. It holds no secret (the wrapped key is
// encrypted under the KEK).
type Manifest struct {
	Format     string        `json:"format"`
	BackupID   string        `json:"backup_id"`
	Created    time.Time     `json:"created"`
	KeyLabel   string        `json:"key_label"`
	Public     []byte        `json:"public"` // 65-byte P-256 point
	WrapAlg    string        `json:"wrap_alg"`
	Wrapped    []byte        `json:"wrapped"`
	SplitAlg   string        `json:"split_alg"`
	Threshold  int           `json:"threshold"`
	Total      int           `json:"total"`
	KCVAlg     string        `json:"kcv_alg"`
	KCV        string        `json:"kcv"`
	ShareAlg   string        `json:"share_alg"`
	Shares     []ShareRecord `json:"shares"`
	Canary     string        `json:"canary"` // envelope text sealed to Public
	CanaryHash string        `json:"canary_plaintext_sha256"`
}

// ShareRecord names the officer holding share Index and its Commitment.
type ShareRecord struct {
	Index      int    `json:"index"`
	Officer    string `json:"officer"`
	Commitment string `json:"commitment"`
}

// Marshal encodes m as indented JSON.
func (m *Manifest) Marshal() []byte {
	b, _ := json.MarshalIndent(m, "", "  ")
	return append(b, '\n')
}

// ParseManifest parses a backup manifest strictly (ErrFormat).
func ParseManifest(b []byte) (*Manifest, error) {
	bad := func(f string, a ...any) (*Manifest, error) {
		return nil, fmt.Errorf("%w: backup manifest: %s", ErrFormat, fmt.Sprintf(f, a...))
	}
	if len(b) > 1<<20 {
		return bad("too large")
	}
	var m Manifest
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		return bad("%v", err)
	}
	if dec.More() {
		return bad("trailing data")
	}
	switch {
	case m.Format != ManifestFormat:
		return bad("format %q, want %q", m.Format, ManifestFormat)
	case m.WrapAlg != WrapAlg || m.SplitAlg != SplitAlg || m.KCVAlg != KCVAlg || m.ShareAlg != ShareAlg:
		return bad("unknown algorithms")
	case !hexIDRe.MatchString(m.BackupID):
		return bad("bad backup id")
	case m.KeyLabel == "" || len(m.Public) != 65 || len(m.Wrapped) == 0 || len(m.Wrapped) > 4096:
		return bad("bad key label, public key or wrapped key")
	case m.Threshold < 2 || m.Threshold > m.Total || m.Total > 255 || len(m.Shares) != m.Total:
		return bad("threshold %d, total %d, %d shares", m.Threshold, m.Total, len(m.Shares))
	case len(m.KCV) != 6:
		return bad("bad kcv")
	}
	for i, s := range m.Shares {
		if s.Index != i+1 || !officerNameRe.MatchString(s.Officer) || len(s.Commitment) != 64 {
			return bad("share record %d", i+1)
		}
	}
	if _, err := hex.DecodeString(m.KCV + m.CanaryHash); err != nil || len(m.CanaryHash) != 64 {
		return bad("kcv or canary hash not hex")
	}
	return &m, nil
}

// KCV is the key check value of kek: the first 3 bytes of AES-256-ECB
// encryption of the all-zero block, hex (the common banking KCV).
func KCV(kek []byte) (string, error) {
	c, err := aes.NewCipher(kek)
	if err != nil {
		return "", err
	}
	var z [16]byte
	c.Encrypt(z[:], z[:])
	return hex.EncodeToString(z[:3]), nil
}

// BackupResult is a backup's output: the manifest and one age-encrypted
// share file per officer (ShareFiles[i] holds share i+1 for Officers[i]).
type BackupResult struct {
	Manifest   *Manifest
	ShareFiles [][]byte
	Officers   []Officer
}

// Backup wraps the private key labelled label out of dev under a fresh
// 256-bit KEK (crypto/rand) imported as a trusted wrap-only key in an SO
// session (SO PIN from soPINFile), splits the KEK threshold-of-len(officers)
// with Shamir, encrypts share i to officers[i]'s age recipient, computes the
// KCV, seals a canary envelope to the key's public half, and clears the KEK
// and the plaintext shares (best effort). Nothing is written to disk: the
// caller writes the outputs (and hashes them into the transcript).
func Backup(ctx context.Context, dev Device, label, soPINFile string, officers []Officer, threshold int, now time.Time) (*BackupResult, error) {
	if threshold < 2 || threshold > len(officers) {
		return nil, fmt.Errorf("%w: threshold %d of %d officers", ErrFormat, threshold, len(officers))
	}
	key, err := dev.FindKey(ctx, label)
	if err != nil {
		return nil, fmt.Errorf("ceremony: backup: %w", err)
	}
	var idb [16]byte
	rand.Read(idb[:])
	m := &Manifest{Format: ManifestFormat, BackupID: hex.EncodeToString(idb[:]), Created: now.UTC().Truncate(time.Second),
		KeyLabel: label, Public: key.Public, WrapAlg: WrapAlg, SplitAlg: SplitAlg, Threshold: threshold,
		Total: len(officers), KCVAlg: KCVAlg, ShareAlg: ShareAlg}

	kek := make([]byte, hsm.BackupKEKSize)
	defer clear(kek)
	if _, err := rand.Read(kek); err != nil {
		return nil, err
	}
	if m.KCV, err = KCV(kek); err != nil {
		return nil, err
	}
	if m.Wrapped, err = dev.WrapForBackup(ctx, label, soPINFile, kek); err != nil {
		return nil, fmt.Errorf("ceremony: backup: %w", err)
	}
	parts, err := shamir.Split(kek, threshold, len(officers))
	if err != nil {
		return nil, fmt.Errorf("ceremony: backup: %w", err)
	}
	defer func() {
		for _, p := range parts {
			clear(p)
		}
	}()
	res := &BackupResult{Manifest: m, Officers: officers}
	for i, o := range officers {
		s := Share{BackupID: m.BackupID, Index: i + 1, Threshold: threshold, Total: len(officers), Officer: o.Name, Value: parts[i][1:]}
		f, err := EncryptShare(s, o.recipient)
		if err != nil {
			return nil, err
		}
		res.ShareFiles = append(res.ShareFiles, f)
		m.Shares = append(m.Shares, ShareRecord{Index: i + 1, Officer: o.Name, Commitment: s.Commitment()})
	}
	if m.Canary, m.CanaryHash, err = sealCanary(ctx, m.BackupID, key.Public); err != nil {
		return nil, err
	}
	return res, nil
}

// sealCanary seals a random canary to escrowPublic as the escrow stanza of
// an envelope with a throwaway participant and a throwaway software header
// signer (the canary proves the escrow private key, not the signing key).
func sealCanary(ctx context.Context, backupID string, escrowPublic []byte) (string, string, error) {
	pt := make([]byte, 32)
	rand.Read(pt)
	part, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		return "", "", err
	}
	sk, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", err
	}
	env, err := envelope.Seal(ctx, envelope.SealInput{
		TransactionID: "canary-" + backupID[:16], JobID: "backup-canary",
		Plaintext:    pt,
		Participants: []envelope.Recipient{{ID: "canary", KeyVersion: 1, Alg: hsm.X25519, Public: part.PublicKey().Bytes()}},
		Escrow:       envelope.Recipient{KeyVersion: 1, Alg: hsm.P256, Public: escrowPublic},
	}, throwawaySigner{sk})
	if err != nil {
		return "", "", fmt.Errorf("ceremony: canary: %w", err)
	}
	h := sha256.Sum256(pt)
	return env.Text(), hex.EncodeToString(h[:]), nil
}

type throwawaySigner struct{ k *ecdsa.PrivateKey }

func (throwawaySigner) KeyID() string { return "canary:v1" }
func (s throwawaySigner) Sign(_ context.Context, digest []byte) ([]byte, error) {
	r, ss, err := ecdsa.Sign(rand.Reader, s.k, digest)
	if err != nil {
		return nil, err
	}
	out := make([]byte, 64)
	r.FillBytes(out[:32])
	ss.FillBytes(out[32:])
	return out, nil
}
