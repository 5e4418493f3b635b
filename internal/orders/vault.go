package orders

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"

	vault "github.com/hashicorp/vault/api"

	"custody/internal/safefile"
)

// Paths locates the three kinds of record in a KV version 2 mount.
type Paths struct {
	Mount       string // e.g. "secret"
	Orders      string // e.g. "custody/orders"
	Revocations string // e.g. "custody/revocations"
	Uses        string // e.g. "custody/uses"
}

// Paths returns the configured record locations.
func (c *Config) Paths() Paths {
	return Paths{Mount: c.Mount, Orders: c.OrdersPath, Revocations: c.RevocationsPath, Uses: c.UsesPath}
}

// DefaultPaths are the locations when the configuration leaves them out.
var DefaultPaths = Paths{Mount: DefaultMount, Orders: DefaultOrdersPath, Revocations: DefaultRevocationsPath, Uses: DefaultUsesPath}

func (p Paths) data(prefix, id string) string { return p.Mount + "/data/" + prefix + "/" + id }

// NewClient returns a Vault API client for address with no retries (a
// failing Vault must fail fast, not be hammered), no rate limiter, TLS
// verification always on (trusting caCert, a PEM file, when given, else
// the system roots), and no token: the caller sets one. The VAULT_*
// environment variables that vault.DefaultConfig reads (VAULT_SKIP_VERIFY,
// VAULT_CACERT, VAULT_MAX_RETRIES, …) are overridden.
func NewClient(address, caCert string) (*vault.Client, error) {
	cfg := vault.DefaultConfig()
	if cfg.Error != nil {
		return nil, fmt.Errorf("vault client: %w", cfg.Error)
	}
	cfg.Address = address
	cfg.MaxRetries = 0
	cfg.Limiter = nil
	cfg.SRVLookup = false
	if tr, ok := cfg.HttpClient.Transport.(*http.Transport); ok {
		tr.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	if caCert != "" {
		if err := cfg.ConfigureTLS(&vault.TLSConfig{CACert: caCert}); err != nil {
			return nil, fmt.Errorf("vault client: ca_cert: %w", err)
		}
	}
	c, err := vault.NewClient(cfg)
	if err != nil {
		return nil, fmt.Errorf("vault client: %w", err)
	}
	c.ClearToken() // NewClient reads VAULT_TOKEN; the caller decides
	c.ClearNamespace()
	return c, nil
}

// kv reads and writes KV version 2 entries.
type kv struct{ c *vault.Client }

// read returns the current version of an entry: its data as JSON and its
// version number. An entry that never existed, or whose metadata was
// deleted, is (nil, 0, nil); an entry whose current version was deleted or
// destroyed is (nil, n, nil) with n ≥ 1: Vault still knows it existed.
func (k kv) read(ctx context.Context, path string) ([]byte, int, error) {
	return k.readVersion(ctx, path, 0)
}

// readVersion is read for version n of the entry (0 = the current one).
// Version n that was deleted, destroyed or pruned (the mount keeps
// max_versions) has no data.
func (k kv) readVersion(ctx context.Context, path string, n int) ([]byte, int, error) {
	var q map[string][]string
	if n > 0 {
		q = map[string][]string{"version": {strconv.Itoa(n)}}
	}
	s, err := k.c.Logical().ReadWithDataWithContext(ctx, path, q)
	if err != nil {
		return nil, 0, vaultError(ctx, err)
	}
	if s == nil || s.Data == nil {
		return nil, 0, nil
	}
	if s.Data["data"] == nil {
		// KV v2 answers 404 with the metadata of a deleted or destroyed
		// version: the entry exists.
		if s.Data["metadata"] == nil {
			return nil, 0, nil
		}
		v, err := version(s.Data["metadata"])
		if err != nil {
			return nil, 0, err
		}
		return nil, v, nil
	}
	data, err := json.Marshal(s.Data["data"])
	if err != nil {
		return nil, 0, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	v, err := version(s.Data["metadata"])
	if err != nil {
		return nil, 0, err
	}
	return data, v, nil
}

// write stores data with check-and-set: cas 0 creates, cas n replaces
// version n. It returns the new version.
func (k kv) write(ctx context.Context, path string, data any, cas int) (int, error) {
	raw, err := json.Marshal(data)
	if err != nil {
		return 0, err
	}
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		return 0, err
	}
	s, err := k.c.Logical().WriteWithContext(ctx, path, map[string]any{"options": map[string]any{"cas": cas}, "data": m})
	if err != nil {
		if isCASConflict(err) {
			return 0, errCAS
		}
		return 0, vaultError(ctx, err)
	}
	if s == nil {
		return 0, fmt.Errorf("%w: empty answer to a write", ErrVaultError)
	}
	return version(s.Data)
}

// list returns the keys under a KV version 2 folder.
func (k kv) list(ctx context.Context, mount, folder string) ([]string, error) {
	s, err := k.c.Logical().ListWithContext(ctx, mount+"/metadata/"+folder)
	if err != nil {
		return nil, vaultError(ctx, err)
	}
	if s == nil || s.Data == nil {
		return nil, nil
	}
	raw, _ := s.Data["keys"].([]any)
	out := make([]string, 0, len(raw))
	for _, k := range raw {
		if k, ok := k.(string); ok {
			out = append(out, k)
		}
	}
	return out, nil
}

func version(meta any) (int, error) {
	m, _ := meta.(map[string]any)
	n, ok := m["version"].(json.Number)
	if !ok {
		return 0, fmt.Errorf("%w: KV answer without a version", ErrVaultError)
	}
	v, err := n.Int64()
	if err != nil || v < 1 {
		return 0, fmt.Errorf("%w: KV version %q", ErrVaultError, n)
	}
	return int(v), nil
}

// errCAS is a check-and-set conflict: the entry changed since it was read.
var errCAS = errors.New("check-and-set conflict")

// isCASConflict recognizes KV version 2's answer to a stale cas (HTTP 400;
// Vault gives no other signal than the message).
func isCASConflict(err error) bool {
	var re *vault.ResponseError
	if !errors.As(err, &re) || re.StatusCode != 400 {
		return false
	}
	for _, m := range re.Errors {
		if strings.Contains(m, "check-and-set") {
			return true
		}
	}
	return false
}

// vaultError maps an error of the Vault client to the package's
// sentinels. The detail (Vault's messages, the URL) is kept for the log;
// it never holds the token.
func vaultError(ctx context.Context, err error) error {
	if ctx.Err() != nil || errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("%w: %v", ErrTimeout, err)
	}
	var re *vault.ResponseError
	if !errors.As(err, &re) {
		return fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	switch {
	case re.StatusCode == 403:
		return fmt.Errorf("%w: %s %s: %s", ErrVaultDenied, re.HTTPMethod, re.URL, strings.Join(re.Errors, "; "))
	case re.StatusCode == 503 && mentions(re.Errors, "sealed"):
		return fmt.Errorf("%w: %s", ErrSealed, strings.Join(re.Errors, "; "))
	case re.StatusCode >= 500:
		return fmt.Errorf("%w: HTTP %d: %s", ErrUnavailable, re.StatusCode, strings.Join(re.Errors, "; "))
	}
	return fmt.Errorf("%w: HTTP %d: %s", ErrVaultError, re.StatusCode, strings.Join(re.Errors, "; "))
}

func mentions(msgs []string, word string) bool {
	for _, m := range msgs {
		if strings.Contains(strings.ToLower(m), word) {
			return true
		}
	}
	return false
}

// ErrCredentialFile is matched when a token, role id or secret id file is
// missing, empty, or readable by others than its owner.
var ErrCredentialFile = errors.New("vault credential file")

// ReadSecretFile reads a credential file (safefile.ReadSecret: a regular
// file owned by root or this process's user, no group or other bits, at
// most 4 KiB) holding one non-empty line. The caller clears the returned
// bytes when done.
func ReadSecretFile(path string) ([]byte, error) {
	raw, err := safefile.ReadSecret(path, 4096)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrCredentialFile, err)
	}
	b := bytes.TrimRight(raw, "\r\n ")
	if len(b) == 0 {
		return nil, fmt.Errorf("%w: %s is empty", ErrCredentialFile, path)
	}
	return b, nil
}
