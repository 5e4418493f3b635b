//go:build cgo

package hsm

// #include <stdlib.h>
import "C"

import (
	"encoding/binary"
	"sync"
	"unsafe"

	"github.com/miekg/pkcs11"
)

// miekg/pkcs11 copies mechanism parameters and attribute values into C memory
// as flat byte slices. Two structures this package needs contain pointers of
// their own — CK_KEY_DERIVATION_STRING_DATA (the parameter of
// CKM_AES_ECB_ENCRYPT_DATA) and the CK_ATTRIBUTE array that is the value of
// CKA_UNWRAP_TEMPLATE — so their pointees must live in C memory, allocated here.
// This file assumes an LP64 platform (Linux amd64/arm64): CK_ULONG and
// pointers are 8 bytes.

const ulongSize = 8

// cBytes is a copy of b in C memory. Call free when the module no longer
// needs it.
type cBytes struct {
	p unsafe.Pointer
	n int
}

func newCBytes(b []byte) cBytes {
	if len(b) == 0 {
		return cBytes{}
	}
	return cBytes{p: C.CBytes(b), n: len(b)}
}

func (c cBytes) free() {
	if c.p != nil {
		// Zero before freeing: best effort, the data is not secret today
		// but the helper should not leave copies behind.
		clear(unsafe.Slice((*byte)(c.p), c.n))
		C.free(c.p)
	}
}

// keyDerivationStringData returns the bytes of a CK_KEY_DERIVATION_STRING_DATA
// { CK_BYTE_PTR pData; CK_ULONG ulLen; } pointing at data, and the C copy of
// data that must be freed after the call that uses the parameter.
func keyDerivationStringData(data []byte) ([]byte, cBytes) {
	c := newCBytes(data)
	param := make([]byte, 2*ulongSize)
	binary.NativeEndian.PutUint64(param[0:], uint64(uintptr(c.p)))
	binary.NativeEndian.PutUint64(param[ulongSize:], uint64(len(data)))
	return param, c
}

// attributeArray returns the bytes of a CK_ATTRIBUTE[] whose values are
// allocated in C memory that is never freed. Use it only for templates built
// once per process.
func attributeArray(attrs []*pkcs11.Attribute) []byte {
	const attrSize = 3 * ulongSize // type, pValue, ulValueLen
	out := make([]byte, attrSize*len(attrs))
	for i, a := range attrs {
		c := newCBytes(a.Value)
		o := out[i*attrSize:]
		binary.NativeEndian.PutUint64(o[0:], uint64(a.Type))
		binary.NativeEndian.PutUint64(o[ulongSize:], uint64(uintptr(c.p)))
		binary.NativeEndian.PutUint64(o[2*ulongSize:], uint64(len(a.Value)))
	}
	return out
}

// dekTemplate is what every DEK unwrapped under a KEK must look like: a
// session AES key that can only decrypt and never leaves the device. It is
// passed to C_UnwrapKey and enforced through CKA_UNWRAP_TEMPLATE on the KEK.
// CKA_VALUE_LEN is absent: it is read-only in unwrap templates.
func dekTemplate() []*pkcs11.Attribute {
	return []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false),
		pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, true),
		pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, false),
		pkcs11.NewAttribute(pkcs11.CKA_WRAP, false),
		pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, false),
		pkcs11.NewAttribute(pkcs11.CKA_DERIVE, false),
	}
}

// unwrapTemplateValue is the CKA_UNWRAP_TEMPLATE value of every KEK, built
// once (its C memory lives as long as the process).
var unwrapTemplateValue = sync.OnceValue(func() []byte {
	return attributeArray(dekTemplate())
})
