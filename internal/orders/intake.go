package orders

import (
	"context"
	"crypto/ed25519"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"slices"
	"time"

	vault "github.com/hashicorp/vault/api"
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
// that id (cas=0). It returns the KV version (1).
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
// if none).
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
	rdata, _, err := in.kv.read(ctx, in.paths.data(in.paths.Revocations, id))
	if err != nil {
		return rec, ver, nil, err
	}
	var rev *Revocation
	if rdata != nil {
		rev = &Revocation{}
		if err := decodeJSON(rdata, rev); err != nil {
			rev.Reason = "(unreadable revocation record: the order counts as revoked)"
		}
	}
	return rec, ver, rev, nil
}

// Sign adds signer's signature to the order with check-and-set on the
// version it read, so two signers signing at once cannot lose one another's
// signature (the loser retries). It returns the new KV version.
func (in *Intake) Sign(ctx context.Context, id, signer string, key ed25519.PrivateKey) (int, error) {
	if !nameRe.MatchString(signer) {
		return 0, fmt.Errorf("signer name %q: 1-64 of [a-z0-9_-], starting with a letter", signer)
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

// LoadPrivateKey reads a signer key file: mode 0400 or 0600, one PKCS #8
// PEM block holding an Ed25519 key. It returns the key and the signer name
// of its header ("" if none). The caller clears the key when done.
func LoadPrivateKey(path string) (ed25519.PrivateKey, string, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, "", err
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, "", fmt.Errorf("%s has mode %04o: a signer key file must be 0400 or 0600", path, fi.Mode().Perm())
	}
	raw, err := os.ReadFile(path)
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
