//go:build cgo

package hsm

import (
	"errors"
	"fmt"
	"sync"

	"github.com/miekg/pkcs11"
)

// A PKCS#11 library is initialized once per process (C_Initialize), and every
// pkcs11.Ctx on the same path shares that state. Tokens (and InitToken) on
// the same module therefore share one reference-counted module; the last
// release finalizes it, and only if this package was the one that
// initialized it.

type module struct {
	path  string
	ctx   *pkcs11.Ctx
	fns   *functionList // the same module's function list, for the one-call v2 chains (gcmfields.go)
	refs  int
	owned bool // our C_Initialize succeeded, so C_Finalize is ours too
}

var modules = struct {
	sync.Mutex
	m map[string]*module
}{m: map[string]*module{}}

// acquireModule loads and initializes the module at path, or takes another
// reference to it.
func acquireModule(path string) (*module, error) {
	modules.Lock()
	defer modules.Unlock()
	if m := modules.m[path]; m != nil {
		m.refs++
		return m, nil
	}
	ctx := pkcs11.New(path)
	if ctx == nil {
		return nil, fmt.Errorf("hsm: cannot load PKCS#11 module %q", path)
	}
	fns, err := loadFunctionList(path)
	if err != nil {
		ctx.Destroy()
		return nil, err
	}
	owned, err := initialize(ctx)
	if err != nil {
		ctx.Destroy()
		fns.unload()
		return nil, fmt.Errorf("hsm: C_Initialize of %q: %w", path, err)
	}
	m := &module{path: path, ctx: ctx, fns: fns, refs: 1, owned: owned}
	modules.m[path] = m
	return m, nil
}

// initialize calls C_Initialize; CKR_CRYPTOKI_ALREADY_INITIALIZED (another
// library in this process got there first) is success, but not ownership.
func initialize(ctx *pkcs11.Ctx) (owned bool, err error) {
	err = ctx.Initialize()
	if isCode(err, pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED) {
		return false, nil
	}
	return err == nil, err
}

// reinitialize is used by recovery after CKR_CRYPTOKI_NOT_INITIALIZED:
// somebody finalized the library under us.
func (m *module) reinitialize() error {
	modules.Lock()
	defer modules.Unlock()
	owned, err := initialize(m.ctx)
	m.owned = m.owned || owned
	return err
}

// recycle finalizes and initializes the module again, which makes SoftHSM
// free the session objects it keeps after C_DestroyObject (SoftHSMv2 issues
// 562/563, fixed after 2.6.1). It does so only when the caller's Token is
// the module's only user in this process and this package initialized it,
// and reports whether it did. Every session is gone afterwards: the caller
// (a pool rebuild, with its sessions already closed) logs in again.
func (m *module) recycle() (bool, error) {
	modules.Lock()
	defer modules.Unlock()
	if m.refs != 1 || !m.owned {
		return false, nil
	}
	if err := m.ctx.Finalize(); err != nil && !isCode(err, pkcs11.CKR_CRYPTOKI_NOT_INITIALIZED) {
		return false, fmt.Errorf("C_Finalize: %w", err)
	}
	owned, err := initialize(m.ctx)
	m.owned = owned
	if err != nil {
		return false, fmt.Errorf("C_Initialize: %w", err)
	}
	return true, nil
}

// release drops one reference; the last one finalizes (if owned) and
// unloads the module.
func (m *module) release() error {
	modules.Lock()
	defer modules.Unlock()
	m.refs--
	if m.refs > 0 {
		return nil
	}
	delete(modules.m, m.path)
	var err error
	if m.owned {
		err = m.ctx.Finalize()
		if isCode(err, pkcs11.CKR_CRYPTOKI_NOT_INITIALIZED) {
			err = nil
		}
	}
	m.ctx.Destroy()
	m.fns.unload()
	return err
}

// isCode reports whether err is the PKCS#11 return code rv.
func isCode(err error, rv uint) bool {
	var e pkcs11.Error
	return errors.As(err, &e) && uint(e) == rv
}

// lostCodes are the return codes that mean the session, the login or the
// token itself is gone: the pool rebuilds and the operation is retried once.
var lostCodes = map[uint]bool{
	pkcs11.CKR_SESSION_HANDLE_INVALID:   true,
	pkcs11.CKR_SESSION_CLOSED:           true,
	pkcs11.CKR_USER_NOT_LOGGED_IN:       true,
	pkcs11.CKR_DEVICE_REMOVED:           true,
	pkcs11.CKR_TOKEN_NOT_PRESENT:        true,
	pkcs11.CKR_TOKEN_NOT_RECOGNIZED:     true,
	pkcs11.CKR_DEVICE_ERROR:             true,
	pkcs11.CKR_CRYPTOKI_NOT_INITIALIZED: true,
	pkcs11.CKR_SLOT_ID_INVALID:          true,
}

func isLost(err error) bool {
	var e pkcs11.Error
	return errors.As(err, &e) && lostCodes[uint(e)]
}

// integrityCodes are the answers a token gives when an authenticated unwrap
// or decryption fails. SoftHSM 2.6 answers CKR_GENERAL_ERROR for all of them.
var integrityCodes = map[uint]bool{
	pkcs11.CKR_GENERAL_ERROR:            true,
	pkcs11.CKR_ENCRYPTED_DATA_INVALID:   true,
	pkcs11.CKR_ENCRYPTED_DATA_LEN_RANGE: true,
	pkcs11.CKR_WRAPPED_KEY_INVALID:      true,
	pkcs11.CKR_WRAPPED_KEY_LEN_RANGE:    true,
	pkcs11.CKR_DATA_INVALID:             true,
	pkcs11.CKR_DATA_LEN_RANGE:           true,
	ckrAEADDecryptFailed:                true,
}

func isIntegrity(err error) bool {
	var e pkcs11.Error
	return errors.As(err, &e) && integrityCodes[uint(e)]
}

// Constants from PKCS#11 3.0 that miekg/pkcs11 v1.1.2 does not define.
const (
	ckmECEdwardsKeyPairGen    = 0x1055
	ckmECMontgomeryKeyPairGen = 0x1056
	ckmEdDSA                  = 0x1057
	ckmHKDFDerive             = 0x402a
	ckkECEdwards              = 0x40
	ckkECMontgomery           = 0x41
	ckrAEADDecryptFailed      = 0x35
)

// DER-encoded curve OIDs for CKA_EC_PARAMS.
var (
	oidX25519 = []byte{0x06, 0x03, 0x2b, 0x65, 0x6e}                               // 1.3.101.110
	oidP256   = []byte{0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07} // 1.2.840.10045.3.1.7
	// curve25519Name is PrintableString "curve25519": SoftHSM 2.6 stores this,
	// not the OID it was given, as CKA_EC_PARAMS of an X25519 private key.
	curve25519Name = append([]byte{0x13, 0x0a}, "curve25519"...)
)
