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
	"errors"
	"fmt"
	"strings"
	"time"

	"golang.org/x/mod/sumdb/note"

	"custody/internal/device"
	"custody/internal/envelope"
	"custody/internal/keys"
	"custody/internal/shamir"
)

// Device is what a ceremony needs from the token (package hsm's *Token).
type Device interface {
	FindKey(ctx context.Context, label string) (device.KeyInfo, error)
	WrapForBackup(ctx context.Context, label string, soPIN, kek []byte) ([]byte, error)
	RestoreFromBackup(ctx context.Context, label string, kek, wrapped, public []byte) (device.KeyInfo, error)
	DestroyKeyPair(ctx context.Context, label string) error
	Open(ctx context.Context, req device.OpenRequest) ([]byte, error)
}

// Algorithm names written into a Manifest.
const (
	ManifestFormat = "custody-backup v2"
	WrapAlg        = "CKM_AES_KEY_WRAP_PAD/PKCS8"  // the token's C_WrapKey output
	SplitAlg       = "shamir-gf256-0x11b"          // package shamir
	KCVAlg         = "AES-256-ECB(KEK, 0^128)[:3]" // the classic 3-byte key check value
	ShareAlg       = "age-x25519"                  // each share file
)

// Manifest is the backup's public output (wrapped-key file): everything
// restore needs but the shares. It holds no secret (the wrapped key is
// encrypted under the KEK). Its file form (SignManifest, OpenManifest) is
// a signed note whose text is the line "custody backup manifest v2" and
// the manifest's JSON, signed inside the HSM by the backing-up daemon's
// access-log key: a restoring daemon accepts only manifests signed by a
// key pinned in its configuration (ceremony.trusted_backup_signers), so an
// officer cannot have a key of their own making installed.
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

// ShareRecord names the officer holding share Index, the age recipient it
// was encrypted to, and its Commitment.
type ShareRecord struct {
	Index      int    `json:"index"`
	Officer    string `json:"officer"`
	Recipient  string `json:"recipient"`
	Commitment string `json:"commitment"`
}

// ShareSet is the set the backup's KEK shares are checked against.
func (m *Manifest) ShareSet() ShareSet {
	return ShareSet{Kind: KEKShare, ID: m.BackupID, Threshold: m.Threshold, Total: m.Total, Records: m.Shares}
}

// Marshal encodes m as indented JSON (the body of the signed file).
func (m *Manifest) Marshal() []byte {
	b, _ := json.MarshalIndent(m, "", "  ")
	return append(b, '\n')
}

// manifestNoteHeader is the first line of a signed manifest's note text:
// it keeps a manifest signature apart from the log key's other signatures
// (checkpoints, transcripts).
const manifestNoteHeader = "custody backup manifest v2\n"

// SignManifest returns m's file form: a signed note (text: the header line
// and m's JSON) signed by signer, the daemon's access-log key.
func SignManifest(m *Manifest, signer note.Signer) ([]byte, error) {
	b, err := note.Sign(&note.Note{Text: manifestNoteHeader + string(m.Marshal())}, signer)
	if err != nil {
		return nil, fmt.Errorf("ceremony: signing the manifest: %w", err)
	}
	return b, nil
}

// OpenManifest verifies a manifest file against the pinned signers and
// parses it. It returns the manifest and the verifier key name of the
// signer that verified. ErrUntrustedManifest: not signed, signed by no
// pinned key, or a signature that does not verify (an unsigned v1 manifest
// included); ErrFormat: the file or the manifest does not parse.
func OpenManifest(file []byte, trusted note.Verifiers) (*Manifest, string, error) {
	if len(file) > 1<<20 {
		return nil, "", fmt.Errorf("%w: backup manifest: too large", ErrFormat)
	}
	if bytes.HasPrefix(bytes.TrimSpace(file), []byte("{")) {
		return nil, "", fmt.Errorf("%w: the manifest is unsigned JSON (a custody-backup v1 manifest); make a new backup, whose manifest the daemon signs", ErrUntrustedManifest)
	}
	n, err := note.Open(file, trusted)
	var unknown *note.UnverifiedNoteError
	var invalid *note.InvalidSignatureError
	switch {
	case errors.As(err, &unknown):
		names := []string{}
		for _, s := range unknown.Note.UnverifiedSigs {
			names = append(names, fmt.Sprintf("%s+%08x", s.Name, s.Hash))
		}
		return nil, "", fmt.Errorf("%w: signed by %s, none of them in ceremony.trusted_backup_signers; pin the backing-up daemon's log key (its log.pub) there", ErrUntrustedManifest, strings.Join(names, ", "))
	case errors.As(err, &invalid):
		return nil, "", fmt.Errorf("%w: the signature of %s does not verify: the manifest was changed after the backup", ErrUntrustedManifest, invalid.Name)
	case err != nil:
		return nil, "", fmt.Errorf("%w: backup manifest: not a signed manifest: %v", ErrFormat, err)
	}
	body, ok := strings.CutPrefix(n.Text, manifestNoteHeader)
	if !ok {
		return nil, "", fmt.Errorf("%w: backup manifest: signed text does not start with %q", ErrFormat, strings.TrimSpace(manifestNoteHeader))
	}
	m, err := ParseManifest([]byte(body))
	if err != nil {
		return nil, "", err
	}
	v, _ := trusted.Verifier(n.Sigs[0].Name, n.Sigs[0].Hash)
	return m, fmt.Sprintf("%s+%08x", v.Name(), v.KeyHash()), nil
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
	case m.KeyLabel == "" || len(m.KeyLabel) > 128 || len(m.Public) != 65 || len(m.Wrapped) == 0 || len(m.Wrapped) > 4096:
		return bad("bad key label, public key or wrapped key")
	case m.Threshold < 2 || m.Threshold > m.Total || m.Total > 255 || len(m.Shares) != m.Total:
		return bad("threshold %d, total %d, %d shares", m.Threshold, m.Total, len(m.Shares))
	case len(m.KCV) != 6:
		return bad("bad kcv")
	}
	if err := checkShareRecords(m.Shares); err != nil {
		return bad("%v", err)
	}
	if _, ok := keys.EscrowLabelVersion(m.KeyLabel); !ok {
		return nil, fmt.Errorf("%w: backup manifest: key label %q", ErrNotEscrowLabel, m.KeyLabel)
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

// BackupResult is a backup's output: the manifest, its signed file form,
// and one age-encrypted share file per officer (ShareFiles[i] holds share
// i+1 for Officers[i]).
type BackupResult struct {
	Manifest     *Manifest
	ManifestFile []byte // SignManifest(Manifest)
	ShareFiles   [][]byte
	Officers     []Officer
}

// Backup wraps the escrow private key labelled label out of dev under a
// fresh 256-bit KEK (crypto/rand) imported as a trusted wrap-only key in an
// SO session, splits the KEK threshold-of-len(officers) with Shamir,
// encrypts share i to officers[i]'s age recipient, computes the KCV, seals
// a canary envelope to the key's public half, and signs the manifest with
// signer (the daemon's access-log key, on the device).
//
// The SO PIN is combined from the officers' SO PIN shares in soPIN: below
// its threshold nothing is touched (ErrNotEnoughShares); once combined, the
// shares are spent whatever happens next. The SO PIN, the KEK and the
// plaintext shares are cleared on return (best effort). Only escrow labels
// are accepted (ErrNotEscrowLabel). Nothing is written to disk: the caller
// writes the outputs (and hashes them into the transcript).
func Backup(ctx context.Context, dev Device, label string, soPIN *Collector, officers []Officer, threshold int, signer note.Signer, now time.Time) (*BackupResult, error) {
	if threshold < 2 || threshold > len(officers) {
		return nil, fmt.Errorf("%w: threshold %d of %d officers", ErrFormat, threshold, len(officers))
	}
	if _, ok := keys.EscrowLabelVersion(label); !ok {
		return nil, fmt.Errorf("%w: %q", ErrNotEscrowLabel, label)
	}
	if soPIN == nil || soPIN.Set().Kind != SOPINShare {
		return nil, fmt.Errorf("%w: a backup logs the security officer in with the SO PIN combined from the officers' shares", ErrNoSOPIN)
	}
	key, err := dev.FindKey(ctx, label)
	if err != nil {
		return nil, fmt.Errorf("ceremony: backup: %w", err)
	}
	raw, err := soPIN.combine()
	if err != nil {
		return nil, err
	}
	pin := SOPINText(raw)
	clear(raw)
	defer clear(pin)

	var idb [16]byte
	rand.Read(idb[:])
	m := &Manifest{Format: ManifestFormat, BackupID: hex.EncodeToString(idb[:]), Created: now.UTC().Truncate(time.Second),
		KeyLabel: label, Public: key.Public, WrapAlg: WrapAlg, SplitAlg: SplitAlg, Threshold: threshold,
		Total: len(officers), KCVAlg: KCVAlg, ShareAlg: ShareAlg}

	kek := make([]byte, device.BackupKEKSize)
	defer clear(kek)
	if _, err := rand.Read(kek); err != nil {
		return nil, err
	}
	if m.KCV, err = KCV(kek); err != nil {
		return nil, err
	}
	if m.Wrapped, err = dev.WrapForBackup(ctx, label, pin, kek); err != nil {
		return nil, fmt.Errorf("ceremony: backup: %w", err)
	}
	res := &BackupResult{Manifest: m, Officers: officers}
	if m.Shares, res.ShareFiles, err = splitTo(KEKShare, m.BackupID, kek, officers, threshold); err != nil {
		return nil, err
	}
	if m.Canary, m.CanaryHash, err = sealCanary(ctx, m.BackupID, key.Public); err != nil {
		return nil, err
	}
	if res.ManifestFile, err = SignManifest(m, signer); err != nil {
		return nil, err
	}
	return res, nil
}

// splitTo splits secret threshold-of-len(officers) and age-encrypts share
// i+1 to officers[i]; it returns the public share records and the files.
func splitTo(kind ShareKind, setID string, secret []byte, officers []Officer, threshold int) ([]ShareRecord, [][]byte, error) {
	parts, err := shamir.Split(secret, threshold, len(officers))
	if err != nil {
		return nil, nil, fmt.Errorf("ceremony: splitting: %w", err)
	}
	defer func() {
		for _, p := range parts {
			clear(p)
		}
	}()
	var recs []ShareRecord
	var files [][]byte
	for i, o := range officers {
		s := Share{Kind: kind, BackupID: setID, Index: i + 1, Threshold: threshold, Total: len(officers), Officer: o.Name, Value: parts[i][1:]}
		f, err := EncryptShare(s, o.recipient)
		if err != nil {
			return nil, nil, err
		}
		files = append(files, f)
		recs = append(recs, ShareRecord{Index: i + 1, Officer: o.Name, Recipient: o.AgeRecipient, Commitment: s.Commitment()})
	}
	return recs, files, nil
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
		Participants: []envelope.Recipient{{ID: "canary", KeyVersion: 1, Alg: device.X25519, Public: part.PublicKey().Bytes()}},
		Escrow:       envelope.Recipient{KeyVersion: 1, Alg: device.P256, Public: escrowPublic},
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
