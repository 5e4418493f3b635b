package orders

import (
	"context"
	"crypto/ed25519"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"slices"
	"time"

	vault "github.com/hashicorp/vault/api"

	"custody/internal/safefile"
)

// Intake is the legal intake role's side: it creates, signs, revokes, shows
// and lists orders with the caller's own Vault token, and Vault refuses
// what that token's policy does not allow (policies/vault/legal-intake.hcl).
// It never touches use counters. Vault errors map to the same sentinels as
// the Checker's.
type Intake struct {
	kv    kv
	paths Paths
}

// NewIntake uses client (with its token set) and paths.
func NewIntake(client *vault.Client, paths Paths) *Intake {
	return &Intake{kv: kv{client}, paths: paths}
}

// ErrExists is returned by Create for an id that is taken, by Revoke for an
// order already revoked, and by Sign for a signer who already signed.
var ErrExists = errors.New("already exists")

// Create validates o and writes it with no signatures, only if no order has
// that id (cas=0). It returns the KV version (1). This first version fixes
// the body for good: the daemon refuses the order if a later version
// carries another body (ErrBodyChanged). Create does not revoke the order
// that o supersedes; the daemon refuses o until that order is revoked
// (ErrSupersededLive), and `custodyctl order create --supersedes` revokes
// it right after creating o.
func (in *Intake) Create(ctx context.Context, o *Order) (int, error) {
	if err := o.Validate(); err != nil {
		return 0, err
	}
	v, err := in.kv.write(ctx, in.paths.data(in.paths.Orders, o.ID), Record{Order: *o, Signatures: []Signature{}}, 0)
	if errors.Is(err, errCAS) {
		return 0, fmt.Errorf("order %q: %w", o.ID, ErrExists)
	}
	return v, err
}

// Show returns the order record, its KV version, and its revocation (nil
// if none; a revocation whose current version was deleted still counts
// and is returned with a reason saying so).
func (in *Intake) Show(ctx context.Context, id string) (*Record, int, *Revocation, error) {
	if !idRe.MatchString(id) {
		return nil, 0, nil, fmt.Errorf("%w: %q is not a valid order id", ErrUnknown, id)
	}
	data, ver, err := in.kv.read(ctx, in.paths.data(in.paths.Orders, id))
	if err != nil {
		return nil, 0, nil, err
	}
	if data == nil {
		return nil, 0, nil, fmt.Errorf("%w: %q", ErrUnknown, id)
	}
	rec, err := ParseRecord(data)
	if err != nil {
		return nil, ver, nil, err
	}
	rdata, rver, err := in.kv.read(ctx, in.paths.data(in.paths.Revocations, id))
	if err != nil {
		return rec, ver, nil, err
	}
	var rev *Revocation
	switch {
	case rdata != nil:
		rev = &Revocation{}
		if err := decodeJSON(rdata, rev); err != nil {
			rev.Reason = "(unreadable revocation record: the order counts as revoked)"
		}
	case rver > 0:
		rev = &Revocation{Reason: "(the revocation record was deleted in Vault: the order still counts as revoked)"}
	}
	return rec, ver, rev, nil
}

// Unchanged reports whether rec, read at KV version ver, still carries
// the body first written under its id: nil if so, an error matching
// ErrBodyChanged if not (the daemon refuses such an order), or a Vault
// failure.
func (in *Intake) Unchanged(ctx context.Context, rec *Record, ver int) error {
	var first read
	if ver != 1 {
		first.data, first.version, first.err = in.kv.readVersion(ctx, in.paths.data(in.paths.Orders, rec.Order.ID), 1)
	}
	return sameAsFirst(rec, ver, first)
}

// Sign adds signer's signature to the order, only if the body in Vault is
// the body the signer reviewed: reviewed is the lowercase hex SHA-256 of
// its canonical form (Order.BodySHA256, what `custodyctl order show`
// prints). A different body is refused with a *ReviewMismatchError
// (ErrReviewMismatch) and a body that is not the one first written under
// the id with ErrBodyChanged; in both cases nothing is written. The write
// uses check-and-set on the version read, so a body swapped between the
// check and the write is caught too (the retry reads and checks again), and
// two signers signing at once cannot lose one another's signature. It
// returns the new KV version.
func (in *Intake) Sign(ctx context.Context, id, signer string, key ed25519.PrivateKey, reviewed string) (int, error) {
	if !nameRe.MatchString(signer) {
		return 0, fmt.Errorf("signer name %q: 1-64 of [a-z0-9_-], starting with a letter", signer)
	}
	if !hexRe.MatchString(reviewed) {
		return 0, fmt.Errorf("reviewed body sha256 %q: want 64 lowercase hex digits", reviewed)
	}
	if !idRe.MatchString(id) {
		return 0, fmt.Errorf("%w: %q is not a valid order id", ErrUnknown, id)
	}
	for range casAttempts {
		data, ver, err := in.kv.read(ctx, in.paths.data(in.paths.Orders, id))
		if err != nil {
			return 0, err
		}
		if data == nil {
			return 0, fmt.Errorf("%w: %q", ErrUnknown, id)
		}
		rec, err := ParseRecord(data)
		if err != nil {
			return 0, err
		}
		if rec.Order.ID != id {
			return 0, fmt.Errorf("%w: record at %q carries id %q", ErrMalformed, id, rec.Order.ID)
		}
		if rec.Order.BodySHA256() != reviewed {
			return 0, &ReviewMismatchError{ID: id, Reviewed: reviewed, InVault: &rec.Order}
		}
		if err := in.Unchanged(ctx, rec, ver); err != nil {
			return 0, err
		}
		if slices.ContainsFunc(rec.Signatures, func(s Signature) bool { return s.Signer == signer }) {
			return 0, fmt.Errorf("%q already signed order %q: %w", signer, id, ErrExists)
		}
		rec.Signatures = append(rec.Signatures, Sign(&rec.Order, signer, key))
		v, err := in.kv.write(ctx, in.paths.data(in.paths.Orders, id), rec, ver)
		if errors.Is(err, errCAS) {
			continue
		}
		return v, err
	}
	return 0, fmt.Errorf("%w: signing %q", ErrConflict, id)
}

// Revoke writes the order's revocation once (cas=0); revoking twice is
// ErrExists and leaves the first record.
func (in *Intake) Revoke(ctx context.Context, id, reason, by string, now time.Time) error {
	if !idRe.MatchString(id) {
		return fmt.Errorf("%w: %q is not a valid order id", ErrUnknown, id)
	}
	if reason == "" || len(reason) > maxTextLength || !printable(reason) {
		return fmt.Errorf("reason: required, 1-%d printable characters", maxTextLength)
	}
	_, err := in.kv.write(ctx, in.paths.data(in.paths.Revocations, id), Revocation{Time: now.UTC().Truncate(time.Second), Reason: reason, By: by}, 0)
	if errors.Is(err, errCAS) {
		return fmt.Errorf("order %q: revocation %w", id, ErrExists)
	}
	return err
}

// List returns the ids of the orders.
func (in *Intake) List(ctx context.Context) ([]string, error) {
	return in.kv.list(ctx, in.paths.Mount, in.paths.Orders)
}

// GenerateKey returns a new signer key pair.
func GenerateKey() (ed25519.PublicKey, ed25519.PrivateKey, error) {
	return ed25519.GenerateKey(nil)
}

// signerHeader is the PEM header naming the signer in a key file.
const signerHeader = "Custody-Order-Signer"

// MarshalPrivateKey encodes a signer key as a PKCS #8 PEM block ("PRIVATE
// KEY") with the signer's name in a Custody-Order-Signer header (when name
// is not empty), the form `custodyctl order keygen` writes.
func MarshalPrivateKey(key ed25519.PrivateKey, name string) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	defer clear(der)
	b := &pem.Block{Type: "PRIVATE KEY", Bytes: der}
	if name != "" {
		b.Headers = map[string]string{signerHeader: name}
	}
	return pem.EncodeToMemory(b), nil
}

// LoadPrivateKey reads a signer key file (safefile.ReadSecret: owned by
// root or this process's user, mode 0400 or 0600), one PKCS #8 PEM block
// holding an Ed25519 key. It returns the key and the signer name of its
// header ("" if none). The caller clears the key when done.
func LoadPrivateKey(path string) (ed25519.PrivateKey, string, error) {
	raw, err := safefile.ReadSecret(path, 16<<10)
	if err != nil {
		return nil, "", err
	}
	defer clear(raw)
	block, rest := pem.Decode(raw)
	if block == nil || block.Type != "PRIVATE KEY" || len(rest) != 0 {
		return nil, "", fmt.Errorf("%s: want one PEM block of type PRIVATE KEY (custodyctl order keygen writes one)", path)
	}
	defer clear(block.Bytes)
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, "", fmt.Errorf("%s: %v", path, err)
	}
	ek, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, "", fmt.Errorf("%s: not an Ed25519 key", path)
	}
	return ek, block.Headers[signerHeader], nil
}
