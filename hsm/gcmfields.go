//go:build cgo

package hsm

/*
#cgo LDFLAGS: -ldl
#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>

// The few PKCS#11 types the field calls below need, with the layout of the
// standard's headers on LP64 platforms (CK_ULONG is unsigned long).
typedef unsigned long cu_ulong;
typedef struct { cu_ulong mechanism; void *parameter; cu_ulong parameter_len; } cu_mechanism;
typedef struct { unsigned char *iv; cu_ulong iv_len; cu_ulong iv_bits; unsigned char *aad; cu_ulong aad_len; cu_ulong tag_bits; } cu_gcm_params;
typedef struct { unsigned char *data; cu_ulong len; } cu_derivation_string;
typedef struct { cu_ulong kdf; cu_ulong shared_len; unsigned char *shared; cu_ulong public_len; unsigned char *public_data; } cu_ecdh1_params;

// CK_FUNCTION_LIST: a CK_VERSION, then the 68 functions of PKCS#11 2.x in
// the standard's order (3.0's C_GetFunctionList returns the same layout).
typedef struct { unsigned char major, minor; void *fn[68]; } cu_function_list;
enum { cu_create_object = 20, cu_destroy_object = 22, cu_encrypt_init = 29, cu_encrypt = 30, cu_decrypt_init = 33, cu_decrypt = 34, cu_unwrap_key = 61, cu_derive_key = 62 };

typedef cu_ulong (*cu_derive_fn)(cu_ulong, cu_mechanism *, cu_ulong, void *, cu_ulong, cu_ulong *);
typedef cu_ulong (*cu_init_fn)(cu_ulong, cu_mechanism *, cu_ulong);
typedef cu_ulong (*cu_crypt_fn)(cu_ulong, unsigned char *, cu_ulong, unsigned char *, cu_ulong *);
typedef cu_ulong (*cu_destroy_fn)(cu_ulong, cu_ulong);
typedef cu_ulong (*cu_create_fn)(cu_ulong, void *, cu_ulong, cu_ulong *);
typedef cu_ulong (*cu_unwrap_fn)(cu_ulong, cu_mechanism *, cu_ulong, unsigned char *, cu_ulong, void *, cu_ulong, cu_ulong *);

// cu_load returns the function list of the module at path, which must be
// loaded already (miekg/pkcs11 loaded it), and a handle for cu_unload; NULL
// when either is missing or the list does not have the expected layout.
static cu_function_list *cu_load(const char *path, void **handle) {
	void *h = dlopen(path, RTLD_NOW | RTLD_NOLOAD);
	if (h == NULL) return NULL;
	cu_ulong (*get)(cu_function_list **) = (cu_ulong (*)(cu_function_list **))dlsym(h, "C_GetFunctionList");
	cu_function_list *l = NULL;
	if (get == NULL || get(&l) != 0 || l == NULL) { dlclose(h); return NULL; }
	// Where the module also exports the functions by name (SoftHSM does),
	// they must be the entries this file calls: a check of the layout.
	static const struct { const char *name; int i; } used[] = {
		{"C_DestroyObject", cu_destroy_object}, {"C_EncryptInit", cu_encrypt_init}, {"C_Encrypt", cu_encrypt},
		{"C_DecryptInit", cu_decrypt_init}, {"C_Decrypt", cu_decrypt}, {"C_DeriveKey", cu_derive_key},
		{"C_UnwrapKey", cu_unwrap_key}, {"C_CreateObject", cu_create_object},
	};
	for (size_t k = 0; k < sizeof used / sizeof used[0]; k++) {
		void *sym = dlsym(h, used[k].name);
		if (l->fn[used[k].i] == NULL || (sym != NULL && sym != l->fn[used[k].i])) { dlclose(h); return NULL; }
	}
	*handle = h;
	return l;
}

static void cu_unload(void *handle) { dlclose(handle); }

// A template for cu_unwrap: a CK_ATTRIBUTE array and its length.
typedef struct { void *attrs; cu_ulong n; } cu_template;

// cu_unwrap is the key half of an envelope v2 open on session s: Z =
// ECDH(priv, peer) (ecdh_mech, no KDF) with template z, KEK =
// AES-256-ECB_Z(context) (derive_mech) with template kek, and the unwrap
// of wrapped under the KEK (unwrap_mech) into *dek with template dek_tmpl.
// Z and the KEK are destroyed before it returns; *created counts the
// objects it made (the DEK's included). On failure it returns the code and
// *step is 1 (ECDH), 2 (KEK) or 3 (unwrap).
static cu_ulong cu_unwrap(cu_function_list *l, cu_ulong s, cu_ulong priv, cu_ulong ecdh_mech, cu_ulong derive_mech, cu_ulong unwrap_mech,
		unsigned char *peer, cu_ulong peer_len, unsigned char *context, unsigned char *wrapped, cu_ulong wrapped_len,
		cu_template z_tmpl, cu_template kek_tmpl, cu_template dek_tmpl, cu_ulong *dek, cu_ulong *created, cu_ulong *step) {
	cu_derive_fn derive = (cu_derive_fn)l->fn[cu_derive_key];
	cu_unwrap_fn unwrap = (cu_unwrap_fn)l->fn[cu_unwrap_key];
	cu_destroy_fn destroy = (cu_destroy_fn)l->fn[cu_destroy_object];
	cu_ulong z = 0, kek = 0, rv;
	cu_ecdh1_params e = { 1, 0, NULL, peer_len, peer }; // CKD_NULL
	cu_mechanism m = { ecdh_mech, &e, sizeof e };
	*step = 1;
	if ((rv = derive(s, &m, priv, z_tmpl.attrs, z_tmpl.n, &z)) != 0) return rv;
	(*created)++;
	cu_derivation_string d = { context, 32 };
	cu_mechanism mk = { derive_mech, &d, sizeof d };
	*step = 2;
	if ((rv = derive(s, &mk, z, kek_tmpl.attrs, kek_tmpl.n, &kek)) == 0) {
		(*created)++;
		cu_mechanism mu = { unwrap_mech, NULL, 0 };
		*step = 3;
		if ((rv = unwrap(s, &mu, kek, wrapped, wrapped_len, dek_tmpl.attrs, dek_tmpl.n, dek)) == 0) (*created)++;
		destroy(s, kek);
	}
	destroy(s, z);
	return rv;
}

// One field of cu_fields. Offsets are into the call's in and out buffers.
typedef struct {
	cu_ulong key;     // in: the field key, 0 to derive it; out: the key used
	cu_ulong derived; // out: 1 when this call derived key
	cu_ulong context; // offset of the 32-byte derivation context
	cu_ulong nonce, nonce_len;
	cu_ulong aad, aad_len;
	cu_ulong data, data_len; // plaintext, or ciphertext‖tag
	cu_ulong out, out_len;   // in: offset and room in out; out: bytes written
} cu_field;

// cu_fields runs one AES-GCM encryption (encrypt != 0) or decryption per
// field on session s, deriving each field key that is 0 from dek with
// derive_mech and template tmpl. Keys it derives are destroyed before it
// returns unless keep. It stops at the first failure: it returns the code
// and sets *failed to the field and *step to 1 (derive), 2 (init) or 3
// (the operation). With keep, every key derived, also before a failure, is
// left in its field with derived set.
static cu_ulong cu_fields(cu_function_list *l, cu_ulong s, cu_ulong dek, cu_ulong derive_mech, cu_ulong gcm_mech,
		void *tmpl, cu_ulong tmpl_len, int encrypt, int keep,
		cu_field *f, cu_ulong n, unsigned char *in, unsigned char *out, cu_ulong *failed, cu_ulong *step) {
	cu_derive_fn derive = (cu_derive_fn)l->fn[cu_derive_key];
	cu_init_fn init = (cu_init_fn)l->fn[encrypt ? cu_encrypt_init : cu_decrypt_init];
	cu_crypt_fn crypt = (cu_crypt_fn)l->fn[encrypt ? cu_encrypt : cu_decrypt];
	cu_destroy_fn destroy = (cu_destroy_fn)l->fn[cu_destroy_object];
	for (cu_ulong i = 0; i < n; i++) {
		cu_field *x = &f[i];
		cu_ulong rv;
		*failed = i;
		if (x->key == 0) {
			cu_derivation_string d = { in + x->context, 32 };
			cu_mechanism m = { derive_mech, &d, sizeof d };
			*step = 1;
			if ((rv = derive(s, &m, dek, tmpl, tmpl_len, &x->key)) != 0) { x->key = 0; return rv; }
			x->derived = 1;
		}
		cu_gcm_params g = { in + x->nonce, x->nonce_len, 8 * x->nonce_len, x->aad_len ? in + x->aad : NULL, x->aad_len, 128 };
		cu_mechanism m = { gcm_mech, &g, sizeof g };
		*step = 2;
		rv = init(s, &m, x->key);
		if (rv == 0) {
			*step = 3;
			rv = crypt(s, in + x->data, x->data_len, out + x->out, &x->out_len);
		}
		if (x->derived && !keep) {
			destroy(s, x->key);
			x->key = 0;
		}
		if (rv != 0) return rv;
	}
	return 0;
}

typedef struct { cu_ulong type; void *value; cu_ulong value_len; } cu_attribute;

// cu_seal imports value as the DEK (template dek_tmpl plus CKA_VALUE,
// value_type), encrypts every field with cu_fields (derive_tmpl for the
// field keys, none kept) and destroys the DEK. A failed import returns its
// code with *step 0.
static cu_ulong cu_seal(cu_function_list *l, cu_ulong s, cu_template dek_tmpl, cu_ulong value_type, unsigned char *value, cu_ulong value_len,
		cu_ulong derive_mech, cu_ulong gcm_mech, void *tmpl, cu_ulong tmpl_len,
		cu_field *f, cu_ulong n, unsigned char *in, unsigned char *out, cu_ulong *failed, cu_ulong *step) {
	cu_attribute a[32];
	if (dek_tmpl.n + 1 > sizeof a / sizeof a[0]) { *step = 0; return 0xD1; } // CKR_TEMPLATE_INCONSISTENT
	memcpy(a, dek_tmpl.attrs, dek_tmpl.n * sizeof a[0]);
	a[dek_tmpl.n] = (cu_attribute){ value_type, value, value_len };
	cu_ulong dek = 0, rv;
	*step = 0;
	rv = ((cu_create_fn)l->fn[cu_create_object])(s, a, dek_tmpl.n + 1, &dek);
	if (rv != 0) return rv;
	rv = cu_fields(l, s, dek, derive_mech, gcm_mech, tmpl, tmpl_len, 1, 0, f, n, in, out, failed, step);
	((cu_destroy_fn)l->fn[cu_destroy_object])(s, dek);
	return rv;
}
*/
import "C"

import (
	"fmt"
	"sync"
	"unsafe"

	"github.com/miekg/pkcs11"
)

// The envelope v2 chains call the module's functions directly, one cgo
// call per part: the key half of an open (unwrapDEK: ECDH, KEK derive,
// unwrap, destroys), all fields of an open (gcmFields: per field a derive
// when the key is not cached, a GCM init, the decrypt, a destroy) and a
// whole seal (sealDEK: the DEK's import, the fields, the destroys).
// Through miekg/pkcs11 each PKCS#11 call is a cgo call of its own, and every SoftHSM call
// (30–90 µs) is long enough for the Go runtime to hand the calling
// thread's P to another thread and make it find one again afterwards:
// docs/performance.md, "Why custodyd spent its CPU in the kernel". The
// plaintexts are written straight into Go memory (miekg's Decrypt leaves a
// copy in freed C memory).

// functionList is a module's PKCS#11 function list, called directly by
// unwrapDEK, gcmFields and sealDEK.
type functionList struct {
	list   *C.cu_function_list
	handle unsafe.Pointer
}

// loadFunctionList finds the function list of the module at path, which
// miekg/pkcs11 has loaded.
func loadFunctionList(path string) (*functionList, error) {
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	var handle unsafe.Pointer
	l := C.cu_load(cpath, &handle)
	if l == nil {
		return nil, fmt.Errorf("hsm: %q has no PKCS#11 function list with the layout of PKCS#11 2.40 (C_GetFunctionList)", path)
	}
	return &functionList{list: l, handle: handle}, nil
}

func (g *functionList) unload() { C.cu_unload(g.handle) }

// gcmField is one field of a gcmFields call.
type gcmField struct {
	key     pkcs11.ObjectHandle // the field key; 0: derive it from the DEK
	context [32]byte            // its derivation context (used when key is 0)
	nonce   []byte
	aad     []byte
	in      []byte // plaintext, or ciphertext‖tag
}

// fieldTemplates are the templates of derived field keys, by usage: C
// memory built once per process.
var fieldTemplates = sync.OnceValue(func() map[uint][]byte {
	return map[uint][]byte{
		pkcs11.CKA_ENCRYPT: attributeArray(sessionAESWith(pkcs11.CKA_ENCRYPT)),
		pkcs11.CKA_DECRYPT: attributeArray(sessionAESWith(pkcs11.CKA_DECRYPT)),
	}
})

// gcmFailure is where a gcmFields call stopped, and the PKCS#11 code.
type gcmFailure struct {
	field int
	step  int // 1 derive, 2 init, 3 the operation
	rv    pkcs11.Error
}

// fieldCall is the C form of one call's fields: their descriptors, one
// input buffer (contexts, nonces, AADs, data) and one output buffer.
type fieldCall struct {
	cf  []C.cu_field
	in  []byte
	out []byte
}

func newFieldCall(fields []gcmField) *fieldCall {
	c := &fieldCall{cf: make([]C.cu_field, len(fields))}
	inLen, outLen := 0, 0
	for i, f := range fields {
		inLen += len(f.context) + len(f.nonce) + len(f.aad) + len(f.in)
		c.cf[i].out, c.cf[i].out_len = C.cu_ulong(outLen), C.cu_ulong(len(f.in)+2*gcmTagSize)
		outLen += len(f.in) + 2*gcmTagSize
	}
	c.in = make([]byte, 0, inLen)
	put := func(b []byte) (off, n C.cu_ulong) {
		off = C.cu_ulong(len(c.in))
		c.in = append(c.in, b...)
		return off, C.cu_ulong(len(b))
	}
	for i, f := range fields {
		c.cf[i].key = C.cu_ulong(f.key)
		c.cf[i].context, _ = put(f.context[:])
		c.cf[i].nonce, c.cf[i].nonce_len = put(f.nonce)
		c.cf[i].aad, c.cf[i].aad_len = put(f.aad)
		c.cf[i].data, c.cf[i].data_len = put(f.in)
	}
	c.out = make([]byte, outLen)
	return c
}

// args are the arguments cu_fields and cu_seal share, for usage.
func (c *fieldCall) args(usage uint) (tmpl unsafe.Pointer, n C.cu_ulong, fields *C.cu_field, count C.cu_ulong, in, out *C.uchar) {
	t := fieldTemplates()[usage]
	const attrSize = 3 * ulongSize
	return unsafe.Pointer(&t[0]), C.cu_ulong(len(t) / attrSize), &c.cf[0], C.cu_ulong(len(c.cf)),
		(*C.uchar)(unsafe.SliceData(c.in)), (*C.uchar)(unsafe.SliceData(c.out))
}

// result is the outputs, one slice of the output buffer per field (nil and
// the buffer cleared on failure), and the error of code rv. The input
// buffer is cleared: it holds plaintexts when sealing.
func (c *fieldCall) result(rv, failed, step C.cu_ulong, usage uint) ([][]byte, error) {
	clear(c.in)
	if rv != 0 {
		clear(c.out)
		return nil, gcmFailure{field: int(failed), step: int(step), rv: pkcs11.Error(rv)}.err(usage)
	}
	out := make([][]byte, len(c.cf))
	for i := range c.cf {
		lo, hi := int(c.cf[i].out), int(c.cf[i].out)+int(c.cf[i].out_len)
		out[i] = c.out[lo:hi:hi]
	}
	return out, nil
}

// gcmFields runs one AES-256-GCM operation per field on session h
// (usage CKA_ENCRYPT or CKA_DECRYPT), in order, in one cgo call. A field
// whose key is 0 gets one derived from dek: AES-256-ECB_dek(context)
// (CKM_AES_ECB_ENCRYPT_DATA) as a sensitive, non-extractable session key
// whose only usage is usage. Derived keys are destroyed on return unless
// keep, in which case keys[i] is the key derived for field i (0 when the
// field had one), also on failure. It returns the outputs in one
// allocation, one slice per field; on failure none, and only keys.
func (g *functionList) gcmFields(h pkcs11.SessionHandle, dek pkcs11.ObjectHandle, usage uint, keep bool, fields []gcmField) (out [][]byte, keys []pkcs11.ObjectHandle, err error) {
	c := newFieldCall(fields)
	encrypt, keepKeys := C.int(0), C.int(0)
	if usage == pkcs11.CKA_ENCRYPT {
		encrypt = 1
	}
	if keep {
		keepKeys = 1
	}
	var failed, step C.cu_ulong
	tmpl, n, cf, count, in, buf := c.args(usage)
	rv := C.cu_fields(g.list, C.cu_ulong(h), C.cu_ulong(dek), pkcs11.CKM_AES_ECB_ENCRYPT_DATA, pkcs11.CKM_AES_GCM,
		tmpl, n, encrypt, keepKeys, cf, count, in, buf, &failed, &step)
	if keep {
		keys = make([]pkcs11.ObjectHandle, len(fields))
		for i := range c.cf {
			if c.cf[i].derived != 0 {
				keys[i] = pkcs11.ObjectHandle(c.cf[i].key)
			}
		}
	}
	out, err = c.result(rv, failed, step, usage)
	return out, keys, err
}

// sealDEK imports dek on session h as a derive-only session key
// (deriveOnlyDEKTemplate, private), encrypts every field as gcmFields does
// with usage CKA_ENCRYPT, and destroys the DEK and the field keys, all in
// one cgo call. The caller clears dek.
func (g *functionList) sealDEK(h pkcs11.SessionHandle, dek []byte, fields []gcmField) ([][]byte, error) {
	c := newFieldCall(fields)
	var failed, step C.cu_ulong
	tmpl, n, cf, count, in, buf := c.args(pkcs11.CKA_ENCRYPT)
	rv := C.cu_seal(g.list, C.cu_ulong(h), sealTemplate(), pkcs11.CKA_VALUE, (*C.uchar)(unsafe.SliceData(dek)), C.cu_ulong(len(dek)),
		pkcs11.CKM_AES_ECB_ENCRYPT_DATA, pkcs11.CKM_AES_GCM, tmpl, n, cf, count, in, buf, &failed, &step)
	if rv != 0 && step == 0 {
		clear(c.in)
		err := pkcs11.Error(rv)
		if isLost(err) {
			return nil, err
		}
		return nil, fmt.Errorf("import DEK (C_CreateObject): %w", err)
	}
	return c.result(rv, failed, step, pkcs11.CKA_ENCRYPT)
}

// sealTemplate is the template of an imported DEK without its value, in C
// memory built once per process.
var sealTemplate = sync.OnceValue(func() C.cu_template {
	return cTemplate(append(deriveOnlyDEKTemplate(), pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true)))
})

// err is the failure as the per-call code reported it: "field i:" and
// the step, wrapping the PKCS#11 code (an integrity failure when a
// decryption failed).
func (f gcmFailure) err(usage uint) error {
	var err error
	switch {
	case f.step == 1:
		err = fmt.Errorf("field key derive (AES_ECB_ENCRYPT_DATA): %w", f.rv)
	case f.step == 2 && usage == pkcs11.CKA_ENCRYPT:
		err = fmt.Errorf("C_EncryptInit (AES_GCM): %w", f.rv)
	case f.step == 2:
		err = fmt.Errorf("C_DecryptInit (AES_GCM): %w", f.rv)
	case usage == pkcs11.CKA_ENCRYPT:
		err = fmt.Errorf("encrypt (AES_GCM): %w", f.rv)
	default:
		err = integrity("decrypt (AES_GCM)", f.rv)
	}
	return fmt.Errorf("field %d: %w", f.field, err)
}

// unwrapTemplates are the templates of cu_unwrap (Z, the KEK of an
// envelope v2, its DEK), in C memory built once per process.
var unwrapTemplates = sync.OnceValue(func() [3]C.cu_template {
	return [3]C.cu_template{cTemplate(sessionAES(true, false)), cTemplate(fieldsKEK()), cTemplate(deriveOnlyDEKTemplate())}
})

// cTemplate is attrs as a CK_ATTRIBUTE array in C memory that is never
// freed.
func cTemplate(attrs []*pkcs11.Attribute) C.cu_template {
	a := attributeArray(attrs)
	return C.cu_template{attrs: C.CBytes(a), n: C.cu_ulong(len(attrs))}
}

// unwrapDEK runs the key half of an envelope v2 open on session h in one
// cgo call, as deriveKEK and C_UnwrapKey would: Z = ECDH(priv, peer), KEK
// = AES-256-ECB_Z(context) as fieldsKEK, the DEK unwrapped from wrapped as
// a derive-only session key (deriveOnlyDEKTemplate, forced by the KEK's
// unwrap template). Z and the KEK are destroyed before it returns; created
// counts the session objects it made, the DEK's included. The caller owns
// the DEK.
func (g *functionList) unwrapDEK(h pkcs11.SessionHandle, priv pkcs11.ObjectHandle, peer []byte, context [32]byte, wrapped []byte) (dek pkcs11.ObjectHandle, created uint64, err error) {
	tm := unwrapTemplates()
	ctx := context // in Go memory for the call
	var d, n, step C.cu_ulong
	rv := C.cu_unwrap(g.list, C.cu_ulong(h), C.cu_ulong(priv), pkcs11.CKM_ECDH1_DERIVE, pkcs11.CKM_AES_ECB_ENCRYPT_DATA, pkcs11.CKM_AES_KEY_WRAP_PAD,
		(*C.uchar)(unsafe.SliceData(peer)), C.cu_ulong(len(peer)), (*C.uchar)(&ctx[0]), (*C.uchar)(unsafe.SliceData(wrapped)), C.cu_ulong(len(wrapped)),
		tm[0], tm[1], tm[2], &d, &n, &step)
	if rv == 0 {
		return pkcs11.ObjectHandle(d), uint64(n), nil
	}
	err = pkcs11.Error(rv)
	switch {
	case step == 1 && (isLost(err) || isHandleInvalid(err)):
	case step == 1:
		err = fmt.Errorf("%w: ECDH derive: %w", ErrIntegrity, err)
	case step == 2:
		err = fmt.Errorf("KEK derive (AES_ECB_ENCRYPT_DATA): %w", err)
	default:
		err = integrity("unwrap DEK (AES_KEY_WRAP_PAD)", err)
	}
	return 0, uint64(n), err
}
