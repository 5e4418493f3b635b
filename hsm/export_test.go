package hsm

import (
	"context"

	"github.com/miekg/pkcs11"
)

// HoldAllSessions borrows every session of t's pool, waiting for operations
// in flight to finish, so that a test can pull the sessions away while no
// call is inside the module (SoftHSM 2.6.1 crashes when C_CloseAllSessions
// races a C_Decrypt on another thread). release gives them back unchanged.
func HoldAllSessions(ctx context.Context, t *Token) (release func(), err error) {
	var held []session
	release = func() {
		for _, s := range held {
			t.pool.release(s, true)
		}
	}
	for range t.pool.n {
		s, err := t.pool.borrow(ctx)
		if err != nil {
			release()
			return nil, err
		}
		held = append(held, s)
	}
	return release, nil
}

// SessionAESForTest, RewrapDEKTemplateForTest and DeriveRewrapKEKForTest
// expose the rewrap path's templates so a test can check that the token
// enforces them.
func SessionAESForTest(derive, unwrap bool) []*pkcs11.Attribute { return sessionAES(derive, unwrap) }

func RewrapDEKTemplateForTest() []*pkcs11.Attribute { return rewrapDEKTemplate() }

func DeriveRewrapKEKForTest(c *pkcs11.Ctx, h pkcs11.SessionHandle, z pkcs11.ObjectHandle, context [32]byte) (pkcs11.ObjectHandle, error) {
	param, cdata := keyDerivationStringData(context[:])
	defer cdata.free()
	return c.DeriveKey(h, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_ECB_ENCRYPT_DATA, param)}, z, rewrapKEK())
}

// MaxBatchRecipients is how many wrap keys a RewrapBatch keeps at once.
const MaxBatchRecipients = maxBatchRecipients

// FieldsDEKTemplateForTest and DeriveFieldsKEKForTest expose the envelope
// v2 open path's templates so a test can check that the token enforces them.
func FieldsDEKTemplateForTest() []*pkcs11.Attribute { return deriveOnlyDEKTemplate() }

func DeriveFieldsKEKForTest(c *pkcs11.Ctx, h pkcs11.SessionHandle, z pkcs11.ObjectHandle, context [32]byte) (pkcs11.ObjectHandle, error) {
	param, cdata := keyDerivationStringData(context[:])
	defer cdata.free()
	return c.DeriveKey(h, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_ECB_ENCRYPT_DATA, param)}, z, fieldsKEK())
}
