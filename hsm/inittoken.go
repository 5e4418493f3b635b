//go:build cgo

package hsm

import (
	"context"
	"fmt"
	"sync"

	"github.com/miekg/pkcs11"
)

// initMu serializes InitToken within the process: two initializations must
// not race for the same free slot.
var initMu sync.Mutex

// InitToken initializes a new token labelled label on a free (uninitialized)
// slot of the module: C_InitToken with the SO PIN, then C_InitPIN with the
// user PIN. The SO PIN is the caller's (custodyd token init makes it
// and splits it among the officers; it is never written to disk); the user
// PIN is read from a file with the same rules as Config.PINFile
// (ErrPINFile), never from arguments. ErrExists if a token with that label
// is already present; ErrNoToken if no free slot is left.
func InitToken(ctx context.Context, modulePath, label string, soPIN []byte, userPINFile string) error {
	if label == "" || len(label) > 32 {
		return fmt.Errorf("hsm: init token: %w: label must be 1..32 bytes", ErrInvalidRequest)
	}
	if len(soPIN) < 4 || len(soPIN) > 255 {
		return fmt.Errorf("hsm: init token: %w: SO PIN must be 4..255 bytes", ErrInvalidRequest)
	}
	userPIN, err := readPINFile(userPINFile)
	if err != nil {
		return fmt.Errorf("hsm: init token: user PIN: %w", err)
	}
	defer clear(userPIN)
	if err := ctx.Err(); err != nil {
		return err
	}

	initMu.Lock()
	defer initMu.Unlock()
	mod, err := acquireModule(modulePath)
	if err != nil {
		return err
	}
	defer mod.release()
	c := mod.ctx

	if _, err := findSlot(c, label); err == nil {
		return fmt.Errorf("hsm: init token: %w: a token labelled %q is present", ErrExists, label)
	}
	slots, err := c.GetSlotList(true)
	if err != nil {
		return fmt.Errorf("hsm: init token: C_GetSlotList: %w", err)
	}
	free, found := uint(0), false
	for _, s := range slots {
		ti, err := c.GetTokenInfo(s)
		if err == nil && ti.Flags&pkcs11.CKF_TOKEN_INITIALIZED == 0 {
			free, found = s, true
			break
		}
	}
	if !found {
		return fmt.Errorf("hsm: init token: %w: no uninitialized slot", ErrNoToken)
	}
	// miekg/pkcs11 takes PINs as strings; those copies cannot be cleared.
	if err := c.InitToken(free, string(soPIN), label); err != nil {
		return fmt.Errorf("hsm: init token: C_InitToken: %w", err)
	}
	// SoftHSM moves a freshly initialized token to a new slot ID: look it up again.
	slot, err := findSlot(c, label)
	if err != nil {
		return fmt.Errorf("hsm: init token: after C_InitToken: %w", err)
	}
	h, err := c.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		return fmt.Errorf("hsm: init token: C_OpenSession: %w", err)
	}
	defer c.CloseSession(h)
	if err := c.Login(h, pkcs11.CKU_SO, string(soPIN)); err != nil {
		return fmt.Errorf("hsm: init token: SO login: %w", err)
	}
	defer c.Logout(h)
	if err := c.InitPIN(h, string(userPIN)); err != nil {
		return fmt.Errorf("hsm: init token: C_InitPIN: %w", err)
	}
	return nil
}
