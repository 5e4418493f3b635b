package orders

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	vault "github.com/hashicorp/vault/api"

	"custody/internal/safefile"
)

// casAttempts bounds the check-and-set attempts of one use increment. Each
// lost attempt means another caller's increment landed, so with max_uses = n
// no caller loses more than n times in a row; the bound matters only when
// something else keeps rewriting the counter.
const casAttempts = 8

// Grant is what an authorized audit decrypt records in the access log.
type Grant struct {
	OrderID        string   // the order's id
	Version        int      // KV version of the order record that was checked
	DocumentSHA256 string   // the order document's hash, as signed
	Authority      string   // issuing authority, as signed
	Signers        []string // who signed, in record order
	Use            int      // this use's number, 1..MaxUses
	MaxUses        int
}

// Uses is the use counter record at <uses_path>/<id>.
type Uses struct {
	Uses int `json:"uses"`
}

// Revocation is the write-once record at <revocations_path>/<id>.
type Revocation struct {
	Time   time.Time `json:"time"`
	Reason string    `json:"reason"`
	By     string    `json:"by,omitempty"` // the revoking Vault entity or user, as the intake tool saw it
}

// Options are a Checker's optional collaborators.
type Options struct {
	Log *slog.Logger     // nil = slog.Default()
	Now func() time.Time // the clock for validity windows; nil = time.Now
}

// Checker decides audit decrypts against the orders in Vault. Build it with
// NewChecker, run Run in a goroutine to keep its token alive, Close it on
// shutdown. It is safe for concurrent use and caches no decision.
type Checker struct {
	cfg    Config
	paths  Paths
	verify *Verifier
	kv     kv
	client *vault.Client
	log    *slog.Logger
	now    func() time.Time

	mu  sync.Mutex // guards ttl, renewable, approle and authErr (the client guards its token)
	ttl time.Duration
	// renewable: the token can be renewed; approle: it came from a login
	// and can be replaced by another.
	renewable, approle bool
	// authErr is why the Checker has no usable token yet (StartChecker,
	// before its first successful authentication); nil once it has one.
	authErr error
}

// NewChecker validates cfg, logs in to Vault (AppRole) or reads the token
// file, and checks the token with a lookup. It fails if Vault cannot be
// reached within cfg.Timeout; the daemon may then start without audit
// decrypt (the routes answer vault_unavailable) or refuse to start.
func NewChecker(ctx context.Context, cfg Config, opt Options) (*Checker, error) {
	c, err := newChecker(cfg, opt)
	if err != nil {
		return nil, err
	}
	if err := c.authenticate(ctx); err != nil {
		return nil, err
	}
	return c, nil
}

// newChecker builds a Checker from a valid cfg, without a token.
func newChecker(cfg Config, opt Options) (*Checker, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	v, err := NewVerifier(cfg.Signers, cfg.Quorum)
	if err != nil {
		return nil, err
	}
	client, err := NewClient(cfg.Address, cfg.CACert)
	if err != nil {
		return nil, err
	}
	client.SetClientTimeout(time.Duration(cfg.Timeout))
	c := &Checker{cfg: cfg, paths: cfg.Paths(), verify: v, kv: kv{client}, client: client, log: opt.Log, now: opt.Now}
	if c.log == nil {
		c.log = slog.Default()
	}
	if c.now == nil {
		c.now = time.Now
	}
	return c, nil
}

// StartChecker is NewChecker for a daemon that must serve while Vault is
// not there yet (the first run builds its dev Vault in the background; a
// Vault outage at boot): only an invalid cfg is an error. If the first
// authentication fails, the Checker refuses every Authorize with
// ErrUnavailable (saying why, and cfg.StatusFile's note) and Run retries
// every few seconds until it succeeds, with no restart. The returned
// error-free Checker's Ready says whether it has a token.
func StartChecker(ctx context.Context, cfg Config, opt Options) (*Checker, error) {
	c, err := newChecker(cfg, opt)
	if err != nil {
		return nil, err
	}
	if err := c.authenticate(ctx); err != nil {
		c.mu.Lock()
		c.authErr = err
		c.mu.Unlock()
		c.log.Warn("vault: not authenticated yet; audit decrypts are refused (vault_unavailable) until it succeeds, retried every few seconds", "err", err, "note", c.statusNote())
	}
	return c, nil
}

// Ready is nil once the Checker holds a token, else why it does not.
func (c *Checker) Ready() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.authErr
}

// statusNote is the first line of cfg.StatusFile, printable and at most
// 200 bytes, or "" (no file, or nothing usable in it).
func (c *Checker) statusNote() string {
	if c.cfg.StatusFile == "" {
		return ""
	}
	b, err := safefile.Read(c.cfg.StatusFile, 4096)
	if err != nil {
		return ""
	}
	line, _, _ := bytes.Cut(b, []byte("\n"))
	if len(line) > 200 {
		line = line[:200]
	}
	if !printable(string(line)) {
		return ""
	}
	return string(line)
}

// unavailable wraps err, an ErrUnavailable, with the status note, if any.
func (c *Checker) unavailable(err error) error {
	if note := c.statusNote(); note != "" {
		return &notedError{err: err, note: note}
	}
	return err
}

// notedError is a refusal with the operator's note on Vault's state.
type notedError struct {
	err  error
	note string
}

func (e *notedError) Error() string { return e.err.Error() + " (" + e.note + ")" }
func (e *notedError) Unwrap() error { return e.err }

// StatusNote returns the note on Vault's state (Config.StatusFile) that an
// ErrUnavailable refusal carries, or "": what a client may be told, where
// the error's own text is for the daemon's log.
func StatusNote(err error) string {
	var n *notedError
	if errors.As(err, &n) {
		return n.note
	}
	return ""
}

// authenticate gets a token (AppRole login, or the token file) and learns
// its TTL.
func (c *Checker) authenticate(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, time.Duration(c.cfg.Timeout))
	defer cancel()
	if c.cfg.AppRole != nil {
		return c.login(ctx)
	}
	tok, err := ReadSecretFile(c.cfg.TokenFile)
	if err != nil {
		return err
	}
	c.client.SetToken(string(tok))
	clear(tok)
	s, err := c.client.Auth().Token().LookupSelfWithContext(ctx)
	if err != nil {
		return fmt.Errorf("vault token_file: lookup-self: %w", vaultError(ctx, err))
	}
	ttl, _ := s.TokenTTL()
	renewable, _ := s.TokenIsRenewable()
	c.mu.Lock()
	c.ttl, c.renewable = ttl, renewable
	c.mu.Unlock()
	return nil
}

func (c *Checker) login(ctx context.Context) error {
	role, err := ReadSecretFile(c.cfg.AppRole.RoleIDFile)
	if err != nil {
		return err
	}
	defer clear(role)
	secret, err := ReadSecretFile(c.cfg.AppRole.SecretIDFile)
	if err != nil {
		return err
	}
	defer clear(secret)
	s, err := c.client.Logical().WriteWithContext(ctx, "auth/"+c.cfg.AppRole.Mount+"/login",
		map[string]any{"role_id": string(role), "secret_id": string(secret)})
	if err != nil {
		return fmt.Errorf("vault approle login: %w", vaultError(ctx, err))
	}
	if s == nil || s.Auth == nil || s.Auth.ClientToken == "" {
		return fmt.Errorf("vault approle login: %w: no token in the answer", ErrVaultError)
	}
	c.client.SetToken(s.Auth.ClientToken)
	c.mu.Lock()
	c.ttl, c.renewable, c.approle = time.Duration(s.Auth.LeaseDuration)*time.Second, s.Auth.Renewable, true
	c.mu.Unlock()
	return nil
}

// Run keeps the token alive until ctx ends: it renews it at two thirds of
// its TTL and, for an AppRole token that cannot be renewed any more, logs in
// again; a token file is re-read when renewal fails (an operator may have
// rotated it). A token without a TTL is left alone. Failures are logged and
// retried; Run returns ctx's error.
func (c *Checker) Run(ctx context.Context) error {
	retry := 5 * time.Second
	if err := c.waitForToken(ctx); err != nil {
		return err
	}
	for {
		c.mu.Lock()
		ttl, renewable := c.ttl, c.renewable
		c.mu.Unlock()
		wait := ttl * 2 / 3
		switch {
		case ttl == 0:
			wait = time.Hour // no TTL: check again later in case the token changed
		case wait < time.Second:
			wait = time.Second
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
		if ttl == 0 {
			continue
		}
		var err error
		if renewable {
			err = c.renew(ctx)
		}
		if err != nil || !renewable {
			if err != nil {
				c.log.Warn("vault token renewal failed; authenticating again", "err", err)
			}
			err = c.authenticate(ctx)
		}
		if err != nil {
			c.log.Error("vault authentication failed; audit decrypts are refused until it succeeds", "err", err)
			c.mu.Lock()
			c.ttl = retry * 3 / 2
			c.mu.Unlock()
		}
	}
}

// waitForToken retries the first authentication of a StartChecker (every
// 2 s, up to every 30 s) until it succeeds or ctx ends.
func (c *Checker) waitForToken(ctx context.Context) error {
	wait := 2 * time.Second
	for c.Ready() != nil {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
		err := c.authenticate(ctx)
		c.mu.Lock()
		c.authErr = err
		c.mu.Unlock()
		if err == nil {
			c.log.Info("vault: authenticated; audit decrypts are checked against Vault", "address", c.cfg.Address)
			return nil
		}
		wait = min(wait*2, 30*time.Second)
	}
	return nil
}

func (c *Checker) renew(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, time.Duration(c.cfg.Timeout))
	defer cancel()
	s, err := c.client.Auth().Token().RenewSelfWithContext(ctx, 0)
	if err != nil {
		return vaultError(ctx, err)
	}
	ttl, _ := s.TokenTTL()
	renewable, _ := s.TokenIsRenewable()
	if ttl == 0 && s.Auth != nil {
		ttl = time.Duration(s.Auth.LeaseDuration) * time.Second
	}
	c.mu.Lock()
	c.ttl, c.renewable = ttl, renewable
	c.mu.Unlock()
	return nil
}

// Close revokes a token that Checker obtained by AppRole login (a token
// file's token belongs to the operator and is left alone) and forgets the
// token. Authorize fails with ErrVaultDenied afterwards.
func (c *Checker) Close() error {
	var err error
	c.mu.Lock()
	approle := c.approle
	c.mu.Unlock()
	if approle {
		ctx, cancel := context.WithTimeout(context.Background(), time.Duration(c.cfg.Timeout))
		defer cancel()
		if rerr := c.client.Auth().Token().RevokeSelfWithContext(ctx, ""); rerr != nil {
			err = vaultError(ctx, rerr)
		}
	}
	c.client.ClearToken()
	return err
}

// Authorize decides whether auditor may open the transaction (txID, jobID,
// createdAt: from the verified envelope header) under order orderID for
// purpose. The checks run in the order of the package doc; the first that
// fails is returned: an order refusal matches ErrDenied and its specific
// sentinel, a Vault failure matches ErrVault and its specific sentinel.
// On nil error one use has been consumed and Grant says which.
// cfg.Timeout bounds the whole call. A nil *Checker refuses everything
// with ErrUnavailable (so that a nil pointer stored in an interface fails
// closed too).
func (c *Checker) Authorize(ctx context.Context, auditor, orderID, purpose, txID, jobID string, createdAt time.Time) (Grant, error) {
	if c == nil {
		return Grant{}, fmt.Errorf("%w: audit decrypt is not configured", ErrUnavailable)
	}
	if err := c.Ready(); err != nil {
		return Grant{}, c.unavailable(fmt.Errorf("%w: the daemon is not authenticated to Vault yet: %v", ErrUnavailable, err))
	}
	ctx, cancel := context.WithTimeout(ctx, time.Duration(c.cfg.Timeout))
	defer cancel()
	if !idRe.MatchString(orderID) {
		return Grant{}, fmt.Errorf("%w: %q is not a valid order id", ErrUnknown, orderID)
	}
	// The four reads go out at once (one round trip of latency instead of
	// four); their answers are judged in the documented order below. The
	// counter read only seeds the first check-and-set attempt.
	ordC := c.fetch(ctx, c.paths.data(c.paths.Orders, orderID), 0)
	firstC := c.fetch(ctx, c.paths.data(c.paths.Orders, orderID), 1)
	revC := c.fetch(ctx, c.paths.data(c.paths.Revocations, orderID), 0)
	useC := c.fetch(ctx, c.paths.data(c.paths.Uses, orderID), 0)
	ord := <-ordC
	data, ver, err := ord.data, ord.version, ord.err
	if err != nil {
		return Grant{}, err
	}
	if data == nil {
		if ver > 0 {
			return Grant{}, fmt.Errorf("%w: %q: its current KV version %d was deleted", ErrUnknown, orderID, ver)
		}
		return Grant{}, fmt.Errorf("%w: %q", ErrUnknown, orderID)
	}
	rec, err := ParseRecord(data)
	if err != nil {
		return Grant{}, fmt.Errorf("order %q version %d: %w", orderID, ver, err)
	}
	o := &rec.Order
	if o.ID != orderID {
		return Grant{}, fmt.Errorf("%w: record at %q carries id %q", ErrMalformed, orderID, o.ID)
	}
	signers, err := c.verify.Verify(rec)
	if err != nil {
		return Grant{}, fmt.Errorf("order %q version %d: %w", orderID, ver, err)
	}
	if err := sameAsFirst(rec, ver, <-firstC); err != nil {
		return Grant{}, err
	}
	rev := <-revC
	if rev.err != nil {
		return Grant{}, rev.err
	}
	if rev.data != nil || rev.version > 0 {
		// Any record revokes, even one that does not parse, and so does
		// one whose current version was deleted or destroyed: fail closed.
		return Grant{}, fmt.Errorf("%w: %q", ErrRevoked, orderID)
	}
	if o.Supersedes != "" {
		// One more round trip, for amendments only.
		old := <-c.fetch(ctx, c.paths.data(c.paths.Revocations, o.Supersedes), 0)
		if old.err != nil {
			return Grant{}, old.err
		}
		if old.data == nil && old.version == 0 {
			return Grant{}, fmt.Errorf("%w: %q amends %q, which is not revoked", ErrSupersededLive, orderID, o.Supersedes)
		}
	}
	now := c.now()
	if now.Before(o.NotBefore) {
		return Grant{}, fmt.Errorf("%w: %q from %s", ErrNotYetValid, orderID, o.NotBefore.Format(time.RFC3339))
	}
	if !now.Before(o.NotAfter) {
		return Grant{}, fmt.Errorf("%w: %q until %s", ErrExpired, orderID, o.NotAfter.Format(time.RFC3339))
	}
	if o.Auditor != auditor {
		return Grant{}, fmt.Errorf("%w: %q is for another auditor than %q", ErrOtherAuditor, orderID, auditor)
	}
	if !o.Scope.Covers(txID, jobID, createdAt) {
		return Grant{}, fmt.Errorf("%w: %q does not cover transaction %q", ErrOutOfScope, orderID, txID)
	}
	if purpose != o.Purpose {
		return Grant{}, fmt.Errorf("%w: %q is for purpose %q", ErrPurpose, orderID, o.Purpose)
	}
	use, err := c.consume(ctx, orderID, o.MaxUses, <-useC)
	if err != nil {
		return Grant{}, err
	}
	return Grant{OrderID: orderID, Version: ver, DocumentSHA256: o.DocumentSHA256, Authority: o.Authority,
		Signers: signers, Use: use, MaxUses: o.MaxUses}, nil
}

// read is one KV answer.
type read struct {
	data    []byte
	version int
	err     error
}

// fetch reads version n of path (0 = the current one) in its own
// goroutine. The channel is buffered: an answer nobody waits for any more
// is dropped, and ctx's end stops the request.
func (c *Checker) fetch(ctx context.Context, path string, n int) <-chan read {
	ch := make(chan read, 1)
	go func() {
		data, ver, err := c.kv.readVersion(ctx, path, n)
		ch <- read{data, ver, err}
	}()
	return ch
}

// sameAsFirst enforces that an order body is written once: rec, read at KV
// version ver, must carry the same canonical body as version 1 of its
// entry (first, as read). Version 1 that is gone (deleted, destroyed, or
// pruned by the mount's max_versions) or does not parse fails closed.
// Errors match ErrBodyChanged, or ErrVault when first could not be read.
func sameAsFirst(rec *Record, ver int, first read) error {
	id := rec.Order.ID
	if ver == 1 {
		return nil // rec is version 1
	}
	if first.err != nil {
		return first.err
	}
	if first.data == nil {
		return fmt.Errorf("%w: order %q is at KV version %d and its version 1 is gone (deleted, destroyed, or beyond the mount's max_versions)", ErrBodyChanged, id, ver)
	}
	r1, err := ParseRecord(first.data)
	if err != nil {
		return fmt.Errorf("%w: order %q: KV version 1 does not parse (%v)", ErrBodyChanged, id, err)
	}
	if !bytes.Equal(r1.Order.Canonical(), rec.Order.Canonical()) {
		return fmt.Errorf("%w: order %q at KV version %d has body sha256 %s, version 1 had %s", ErrBodyChanged, id, ver, rec.Order.BodySHA256(), r1.Order.BodySHA256())
	}
	return nil
}

// consume increments the use counter with check-and-set and returns the new
// count. first is a read of the counter made before; later attempts read
// again.
func (c *Checker) consume(ctx context.Context, orderID string, maxUses int, first read) (int, error) {
	path := c.paths.data(c.paths.Uses, orderID)
	for attempt := range casAttempts {
		r := first
		if attempt > 0 {
			r.data, r.version, r.err = c.kv.read(ctx, path)
		}
		data, ver, err := r.data, r.version, r.err
		if err != nil {
			return 0, err
		}
		if data == nil && ver > 0 {
			// Deleted by someone (the daemon's policy cannot delete):
			// starting again from zero would hand out uses again.
			return 0, fmt.Errorf("use counter of %q: %w: its current version %d was deleted", orderID, ErrMalformed, ver)
		}
		var u Uses
		if data != nil {
			if err := strictDecode(data, &u); err != nil || u.Uses < 0 {
				return 0, fmt.Errorf("use counter of %q: %w", orderID, ErrMalformed)
			}
		}
		if u.Uses >= maxUses {
			return 0, fmt.Errorf("%w: %q used %d of %d times", ErrExhausted, orderID, u.Uses, maxUses)
		}
		_, err = c.kv.write(ctx, path, Uses{Uses: u.Uses + 1}, ver)
		if err == nil {
			return u.Uses + 1, nil
		}
		if !errors.Is(err, errCAS) {
			return 0, err
		}
		// Someone else's increment landed; back off a little, read again.
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("%w: use counter of %q", ErrTimeout, orderID)
		case <-time.After(time.Duration(rand.IntN(1+attempt)*2+1) * time.Millisecond):
		}
	}
	return 0, fmt.Errorf("%w: use counter of %q after %d attempts", ErrConflict, orderID, casAttempts)
}

// decodeJSON is json.Unmarshal for records read by the intake tool.
func decodeJSON(data []byte, v any) error { return json.Unmarshal(data, v) }
