package orders

import (
	"context"
	"time"
)

// KV is the Checker's Vault client as a KV version 2 store, for the other
// state a fleet shares in Vault beside the orders (participant status:
// internal/compliance). It uses the Checker's token, kept alive by its
// Run, so the daemon logs in to Vault once. Its errors are this package's
// Vault sentinels (ErrUnavailable, ErrSealed, ErrVaultDenied, ErrTimeout,
// ErrVaultError, each matching ErrVault) and, from Write,
// ErrCASConflict. It is safe for concurrent use.
type KV struct {
	kv      kv
	mount   string
	timeout time.Duration
}

// ErrCASConflict is Write's answer when the entry's current version is not
// the cas it was given: someone wrote it since it was read.
var ErrCASConflict = errCAS

// KV returns the Checker's client as a KV store on the configured mount
// (vault.kv_mount).
func (c *Checker) KV() KV {
	return KV{kv: c.kv, mount: c.cfg.Mount, timeout: time.Duration(c.cfg.Timeout)}
}

// Mount is the KV version 2 mount (vault.kv_mount).
func (k KV) Mount() string { return k.mount }

// Timeout is vault.timeout: the bound of one call.
func (k KV) Timeout() time.Duration { return k.timeout }

// Read returns the current version of the entry at path (below the
// mount, without "data/"): its data as JSON and its version. An entry that
// never existed is (nil, 0, nil); one whose current version was deleted
// or destroyed is (nil, n, nil) with n ≥ 1.
func (k KV) Read(ctx context.Context, path string) ([]byte, int, error) {
	ctx, cancel := context.WithTimeout(ctx, k.timeout)
	defer cancel()
	return k.kv.read(ctx, k.mount+"/data/"+path)
}

// Write stores data (a JSON object once encoded) at path with
// check-and-set: cas 0 creates the entry, cas n replaces version n. It
// returns the new version, or ErrCASConflict.
func (k KV) Write(ctx context.Context, path string, data any, cas int) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, k.timeout)
	defer cancel()
	return k.kv.write(ctx, k.mount+"/data/"+path, data, cas)
}
