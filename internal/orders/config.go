package orders

import (
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"custody/internal/config/duration"
)

// Config is the daemon's Vault section ("vault" in its configuration file).
//
//	"vault": {
//	  "address": "https://vault.internal:8200",
//	  "approle": {"role_id_file": "/etc/custody/vault-role-id", "secret_id_file": "/etc/custody/vault-secret-id"},
//	  "kv_mount": "secret", "orders_path": "custody/orders",
//	  "revocations_path": "custody/revocations", "uses_path": "custody/uses",
//	  "timeout": "2s",
//	  "signers": [{"name": "judge-a", "public_key": "base64…"}, …],
//	  "quorum": 2
//	}
//
// Exactly one of TokenFile and AppRole is set. Relative file paths are
// resolved by the caller (ResolvePaths), as for the rest of the daemon's
// configuration.
type Config struct {
	Address         string   `json:"address"`
	TokenFile       string   `json:"token_file,omitempty"`
	AppRole         *AppRole `json:"approle,omitempty"`
	Mount           string   `json:"kv_mount"`
	OrdersPath      string   `json:"orders_path"`
	RevocationsPath string   `json:"revocations_path"`
	UsesPath        string   `json:"uses_path"`
	// Timeout bounds one Authorize call, every Vault round trip included.
	Timeout duration.Duration `json:"timeout"`
	// Signers are the pinned order signers; Quorum of them must sign.
	Signers []Signer `json:"signers"`
	Quorum  int      `json:"quorum"`
	CACert  string   `json:"ca_cert,omitempty"` // PEM file of the CA that signs Vault's TLS certificate
	// StatusFile, optional, is a note on Vault's state that someone else
	// keeps (the first run writes how far its dev Vault build is): its
	// first line is added to vault_unavailable answers. It never decides
	// anything.
	StatusFile string `json:"status_file,omitempty"`
}

// AppRole names the files holding the AppRole credentials (mode 0400 or
// 0600). Mount defaults to "approle".
type AppRole struct {
	RoleIDFile   string `json:"role_id_file"`
	SecretIDFile string `json:"secret_id_file"`
	Mount        string `json:"mount,omitempty"`
}

// Signer is a pinned order signer: a name that appears in
// Record.Signatures and the standard base64 of its 32-byte Ed25519 public
// key (what `custodyctl order keygen` prints).
type Signer struct {
	Name      string `json:"name"`
	PublicKey string `json:"public_key"`
}

// Key decodes the public key.
func (s Signer) Key() (ed25519.PublicKey, error) {
	b, err := base64.StdEncoding.Strict().DecodeString(s.PublicKey)
	if err != nil || len(b) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("signer %q: public_key: want standard base64 of %d bytes", s.Name, ed25519.PublicKeySize)
	}
	return ed25519.PublicKey(b), nil
}

// Defaults for the fields Validate fills in when they are empty.
const (
	DefaultMount           = "secret"
	DefaultOrdersPath      = "custody/orders"
	DefaultRevocationsPath = "custody/revocations"
	DefaultUsesPath        = "custody/uses"
	DefaultTimeout         = 2 * time.Second
)

// ErrConfig is matched by every error of Validate.
var ErrConfig = errors.New("vault configuration")

// Validate fills in defaults and checks c; an error names the field with
// its "vault." prefix and matches ErrConfig.
func (c *Config) Validate() error {
	bad := func(field, format string, args ...any) error {
		return fmt.Errorf("%w: vault.%s: %s", ErrConfig, field, fmt.Sprintf(format, args...))
	}
	u, err := url.Parse(c.Address)
	if c.Address == "" || err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return bad("address", "want an http(s) URL such as https://vault.internal:8200")
	}
	if u.Scheme == "http" && !loopback(u.Hostname()) {
		return bad("address", "plain http only to a loopback address")
	}
	switch {
	case c.TokenFile == "" && c.AppRole == nil:
		return bad("token_file", "set token_file or approle")
	case c.TokenFile != "" && c.AppRole != nil:
		return bad("approle", "set token_file or approle, not both")
	case c.AppRole != nil && c.AppRole.RoleIDFile == "":
		return bad("approle.role_id_file", "required")
	case c.AppRole != nil && c.AppRole.SecretIDFile == "":
		return bad("approle.secret_id_file", "required")
	}
	if c.AppRole != nil && c.AppRole.Mount == "" {
		c.AppRole.Mount = "approle"
	}
	if c.Mount == "" {
		c.Mount = DefaultMount
	}
	if c.OrdersPath == "" {
		c.OrdersPath = DefaultOrdersPath
	}
	if c.RevocationsPath == "" {
		c.RevocationsPath = DefaultRevocationsPath
	}
	if c.UsesPath == "" {
		c.UsesPath = DefaultUsesPath
	}
	for field, p := range map[string]string{"kv_mount": c.Mount, "orders_path": c.OrdersPath, "revocations_path": c.RevocationsPath, "uses_path": c.UsesPath} {
		if !validPath(p) {
			return bad(field, "%q: segments of [A-Za-z0-9._-] separated by single slashes", p)
		}
	}
	if c.OrdersPath == c.RevocationsPath || c.OrdersPath == c.UsesPath || c.RevocationsPath == c.UsesPath {
		return bad("uses_path", "orders_path, revocations_path and uses_path must differ")
	}
	if c.Timeout == 0 {
		c.Timeout = duration.Duration(DefaultTimeout)
	}
	if c.Timeout.Std() < 10*time.Millisecond || c.Timeout.Std() > time.Minute {
		return bad("timeout", "%s, want 10ms..1m", c.Timeout)
	}
	if len(c.Signers) == 0 {
		return bad("signers", "at least one pinned signer is required")
	}
	names, keys := map[string]bool{}, map[string]bool{}
	for i, s := range c.Signers {
		if !nameRe.MatchString(s.Name) {
			return bad(fmt.Sprintf("signers[%d].name", i), "%q: 1-64 of [a-z0-9_-], starting with a letter", s.Name)
		}
		k, err := s.Key()
		if err != nil {
			return bad(fmt.Sprintf("signers[%d].public_key", i), "%v", err)
		}
		if names[s.Name] {
			return bad(fmt.Sprintf("signers[%d].name", i), "%q appears twice", s.Name)
		}
		if keys[string(k)] {
			return bad(fmt.Sprintf("signers[%d].public_key", i), "the same key is pinned twice")
		}
		names[s.Name], keys[string(k)] = true, true
	}
	if c.Quorum < 1 || c.Quorum > len(c.Signers) {
		return bad("quorum", "%d, want 1..%d (the number of signers)", c.Quorum, len(c.Signers))
	}
	return nil
}

// ResolvePaths makes the credential file paths absolute against dir (the
// configuration file's directory).
func (c *Config) ResolvePaths(resolve func(string) string) {
	if c.StatusFile != "" {
		c.StatusFile = resolve(c.StatusFile)
	}
	if c.TokenFile != "" {
		c.TokenFile = resolve(c.TokenFile)
	}
	if c.AppRole != nil {
		c.AppRole.RoleIDFile = resolve(c.AppRole.RoleIDFile)
		c.AppRole.SecretIDFile = resolve(c.AppRole.SecretIDFile)
	}
	if c.CACert != "" {
		c.CACert = resolve(c.CACert)
	}
}

func loopback(host string) bool {
	return host == "localhost" || host == "::1" || strings.HasPrefix(host, "127.")
}

func validPath(p string) bool {
	if p == "" {
		return false
	}
	for _, seg := range strings.Split(p, "/") {
		if seg == "" || seg == "." || seg == ".." {
			return false
		}
		for i := 0; i < len(seg); i++ {
			c := seg[i]
			if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-') {
				return false
			}
		}
	}
	return true
}
