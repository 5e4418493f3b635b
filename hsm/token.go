//go:build cgo

package hsm

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/miekg/pkcs11"
)

// Token is an open, logged-in PKCS#11 token with a pool of sessions. All
// methods are safe for concurrent use. Close releases it.
type Token struct {
	cfg  Config
	log  *slog.Logger
	mod  *module
	pool *pool
	caps Capabilities
	info TokenInfo // static fields; Sessions and Rebuilds filled in by Info

	createMu sync.Mutex // serializes key creation (check-then-create)

	cacheMu     sync.Mutex
	cache       map[string]cachedKey // private keys by label (keycache.go); cleared on rebuild
	staleCopies []cachedKey          // forgotten session copies, destroyed by the next privateKey
	keyRecheck  time.Duration        // Config.KeyRecheck resolved; 0: no copies

	deks        *dekCache     // nil when Config.DEKCache is off
	stopJanitor chan struct{} // closed by Close when deks is on

	closeOnce sync.Once
	closeErr  error
}

// Open loads the module (C_Initialize; CKR_CRYPTOKI_ALREADY_INITIALIZED is
// accepted), finds the token by label, logs in as user
// (CKR_USER_ALREADY_LOGGED_IN is accepted), opens the session pool and
// probes the token's capabilities, which it logs. Errors: ErrPINFile,
// ErrNoToken, ErrLogin, or a wrapped PKCS#11 error. Open does not block on
// anything but the module; ctx is checked before each step.
func Open(ctx context.Context, cfg Config, log *slog.Logger) (*Token, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cfg.ModulePath == "" || cfg.TokenLabel == "" {
		return nil, fmt.Errorf("%w: ModulePath and TokenLabel are required", ErrInvalidRequest)
	}
	if cfg.Sessions < 0 {
		return nil, fmt.Errorf("%w: Sessions must not be negative", ErrInvalidRequest)
	}
	if c := cfg.DEKCache; c.Entries < 0 || (c.Entries > 0 && (c.MaxAge <= 0 || c.Recheck < 0)) {
		return nil, fmt.Errorf("%w: DEKCache needs Entries >= 0 and, when on, a positive MaxAge and a Recheck >= 0", ErrInvalidRequest)
	}
	pin, err := readPINFile(cfg.PINFile)
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		clear(pin)
		return nil, err
	}
	mod, err := acquireModule(cfg.ModulePath)
	if err != nil {
		clear(pin)
		return nil, err
	}
	slot, err := findSlot(mod.ctx, cfg.TokenLabel)
	if err != nil {
		clear(pin)
		mod.release()
		return nil, fmt.Errorf("hsm: open: %w", err)
	}
	ti, err := mod.ctx.GetTokenInfo(slot)
	if err != nil {
		clear(pin)
		mod.release()
		return nil, fmt.Errorf("hsm: C_GetTokenInfo: %w", err)
	}
	n := cfg.Sessions
	if n == 0 {
		n = runtime.NumCPU()
		if m := ti.MaxSessionCount; m != pkcs11.CK_EFFECTIVELY_INFINITE && m != pkcs11.CK_UNAVAILABLE_INFORMATION {
			n = min(n, int(m))
		}
		n = max(n, 2)
	}
	t := &Token{
		cfg:        cfg,
		log:        log,
		mod:        mod,
		cache:      map[string]cachedKey{},
		keyRecheck: keyRecheck(cfg.KeyRecheck),
		info: TokenInfo{
			Label:        ti.Label,
			Serial:       ti.SerialNumber,
			Manufacturer: ti.ManufacturerID,
			Model:        ti.Model,
		},
	}
	t.pool = newPool(mod, cfg.TokenLabel, n, pin)
	t.pool.log = log
	t.pool.onRebuild = t.rebuilt
	switch {
	case cfg.RecycleAfter > 0:
		t.pool.recycleAfter = uint64(cfg.RecycleAfter)
	case cfg.RecycleAfter == 0 && strings.HasPrefix(ti.ManufacturerID, "SoftHSM"):
		t.pool.recycleAfter = DefaultSoftHSMRecycle
	}
	if err := t.pool.start(); err != nil {
		clear(pin)
		mod.release()
		return nil, fmt.Errorf("hsm: open: %w", err)
	}
	caps, err := t.probe(ctx)
	if err != nil {
		t.Close()
		return nil, fmt.Errorf("hsm: capability probe: %w", err)
	}
	t.caps = caps
	if cfg.DEKCache.Entries > 0 {
		t.deks = newDEKCache(cfg.DEKCache)
		t.stopJanitor = make(chan struct{})
		go t.janitor(t.stopJanitor)
	}
	log.Info("hsm: token open",
		"token", ti.Label, "serial", ti.SerialNumber, "manufacturer", ti.ManufacturerID,
		"model", ti.Model, "sessions", n, "capabilities", caps.String())
	return t, nil
}

// rebuilt runs after every pool rebuild, holding the pool's lock: the
// sessions that held cached handles are gone.
func (t *Token) rebuilt() {
	t.clearCache()
	if t.deks != nil {
		t.deks.evictWhere(evictRebuild, func(*dekEntry) bool { return true })
	}
}

// Close destroys the cached DEKs, logs out, closes the sessions, clears the PIN from memory and
// releases the module (C_Finalize when this was its last user in the
// process and this package initialized it). Calls after the first return
// the first result; every other method then fails with ErrUnavailable.
// Login state is per process and token: Close logs out any other Token open
// on the same token label in this process too.
func (t *Token) Close() error {
	t.closeOnce.Do(func() {
		if t.deks != nil {
			close(t.stopJanitor)
			t.deks.evictWhere(evictShutdown, func(*dekEntry) bool { return true })
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_ = t.pool.withSessionOf(ctx, func(s session) error {
				t.deks.reap(t.mod.ctx, s.h, s.gen)
				return nil
			})
			cancel()
		}
		err := t.pool.close()
		t.clearCache()
		if rerr := t.mod.release(); rerr != nil && err == nil {
			err = fmt.Errorf("C_Finalize: %w", rerr)
		}
		if err != nil {
			t.closeErr = fmt.Errorf("hsm: close: %w", err)
		}
	})
	return t.closeErr
}

// Capabilities reports what the capability probe found at Open.
func (t *Token) Capabilities() Capabilities { return t.caps }

// Info returns the token's identity and pool statistics. It does not call
// the device.
func (t *Token) Info() TokenInfo {
	i := t.info
	i.Sessions, i.InUse, i.Rebuilds, i.Recycles = t.pool.stats()
	i.Yields = t.pool.yields.Load()
	return i
}

// TokenID returns the token's label and serial number (as Info does; what
// ceremony transcripts name).
func (t *Token) TokenID() (label, serial string) { return t.info.Label, t.info.Serial }

// Ping checks, cheaply, that a pooled session is alive and logged in
// (C_GetSessionInfo). A lost session triggers one rebuild; if the token
// still cannot be reached the error wraps ErrUnavailable.
func (t *Token) Ping(ctx context.Context) error {
	err := t.pool.withSession(ctx, func(h pkcs11.SessionHandle) error {
		si, err := t.mod.ctx.GetSessionInfo(h)
		if err != nil {
			return err
		}
		if si.State != pkcs11.CKS_RW_USER_FUNCTIONS && si.State != pkcs11.CKS_RO_USER_FUNCTIONS {
			return pkcs11.Error(pkcs11.CKR_USER_NOT_LOGGED_IN)
		}
		if _, err := t.mod.ctx.GetTokenInfo(si.SlotID); err != nil {
			return fmt.Errorf("%w (C_GetTokenInfo: %w)", pkcs11.Error(pkcs11.CKR_TOKEN_NOT_PRESENT), err)
		}
		return nil
	})
	if err != nil && !errors.Is(err, ErrUnavailable) && !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) {
		err = fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	if err != nil {
		return fmt.Errorf("hsm: ping: %w", err)
	}
	return nil
}

// probe reads the mechanism list and, for X25519, generates and destroys a
// session key pair to confirm which generation path works.
func (t *Token) probe(ctx context.Context) (Capabilities, error) {
	var c Capabilities
	err := t.pool.withSession(ctx, func(h pkcs11.SessionHandle) error {
		t.pool.mu.Lock()
		slot := t.pool.slot
		t.pool.mu.Unlock()
		mechs, err := t.mod.ctx.GetMechanismList(slot)
		if err != nil {
			return err
		}
		has := map[uint]bool{}
		for _, m := range mechs {
			has[m.Mechanism] = true
		}
		c = Capabilities{
			HKDF:           has[ckmHKDFDerive],
			ECDHDerive:     has[pkcs11.CKM_ECDH1_DERIVE],
			AESKeyWrapPad:  has[pkcs11.CKM_AES_KEY_WRAP_PAD],
			AESGCM:         has[pkcs11.CKM_AES_GCM],
			ECBEncryptData: has[pkcs11.CKM_AES_ECB_ENCRYPT_DATA],
			ECDSA:          has[pkcs11.CKM_ECDSA],
			EdDSA:          has[ckmEdDSA],
			AESCMAC:        has[pkcs11.CKM_AES_CMAC],
		}
		for _, path := range []string{X25519Montgomery, X25519EdwardsOID} {
			mech, _ := x25519Mechanism(path)
			if !has[mech] {
				continue
			}
			pub, priv, err := t.mod.ctx.GenerateKeyPair(h,
				[]*pkcs11.Mechanism{pkcs11.NewMechanism(mech, nil)},
				x25519ProbeTemplate(path, false), x25519ProbeTemplate(path, true))
			if isLost(err) {
				return err
			}
			if err != nil {
				t.log.Debug("hsm: X25519 probe failed", "path", path, "err", err)
				continue
			}
			_ = t.mod.ctx.DestroyObject(h, priv)
			_ = t.mod.ctx.DestroyObject(h, pub)
			c.X25519 = path
			break
		}
		return nil
	})
	return c, err
}

// x25519Mechanism returns the key-generation mechanism and key type of an
// X25519 path.
func x25519Mechanism(path string) (mech, keyType uint) {
	switch path {
	case X25519Montgomery:
		return ckmECMontgomeryKeyPairGen, ckkECMontgomery
	case X25519EdwardsOID:
		return ckmECEdwardsKeyPairGen, ckkECEdwards
	}
	return 0, 0
}

func x25519ProbeTemplate(path string, private bool) []*pkcs11.Attribute {
	_, kt := x25519Mechanism(path)
	a := []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, kt),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
	}
	if private {
		return append(a,
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
			pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
			pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false),
			pkcs11.NewAttribute(pkcs11.CKA_DERIVE, true))
	}
	return append(a,
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PUBLIC_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, oidX25519))
}
