//go:build !cgo

package hsm

import (
	"context"
	"crypto"
	"crypto/ed25519"
	"log/slog"
	"time"
)

// This is the package built without cgo: its cgo-free API (api.go) and
// the declarations below, so that the packages that import it still
// compile with CGO_ENABLED=0. Nothing works: custodyd built this way
// refuses to start with ErrNeedsCgo.

// Token is a PKCS#11 token; without cgo there is none to open.
type Token struct{}

// Open fails with ErrNeedsCgo.
func Open(context.Context, Config, *slog.Logger) (*Token, error) { return nil, ErrNeedsCgo }

// InitToken fails with ErrNeedsCgo.
func InitToken(context.Context, string, string, []byte, string) error { return ErrNeedsCgo }

// The methods of the cgo build, each failing with ErrNeedsCgo (Capabilities
// and Info return zero values). No Token exists to call them on; they are
// here so that the callers compile.

func (*Token) Close() error                    { return ErrNeedsCgo }
func (*Token) Capabilities() Capabilities      { return Capabilities{} }
func (*Token) Info() TokenInfo                 { return TokenInfo{} }
func (*Token) DEKCacheStats() DEKCacheStats    { return DEKCacheStats{} }
func (*Token) TokenID() (label, serial string) { return "", "" }
func (*Token) Ping(context.Context) error      { return ErrNeedsCgo }
func (*Token) KeyCopyCount() int               { return 0 }
func (*Token) SessionObjectCount(context.Context) (int, error) {
	return 0, ErrNeedsCgo
}
func (*Token) GenerateKeyPair(context.Context, KeySpec) (KeyInfo, error) {
	return KeyInfo{}, ErrNeedsCgo
}
func (*Token) FindKey(context.Context, string) (KeyInfo, error) { return KeyInfo{}, ErrNeedsCgo }
func (*Token) ListKeys(context.Context, string) ([]KeyInfo, error) {
	return nil, ErrNeedsCgo
}
func (*Token) DestroyKeyPair(context.Context, string) error    { return ErrNeedsCgo }
func (*Token) PutDataObject(context.Context, DataObject) error { return ErrNeedsCgo }
func (*Token) ListDataObjects(context.Context, string) ([]DataObject, error) {
	return nil, ErrNeedsCgo
}
func (*Token) Open(context.Context, OpenRequest) ([]byte, error) { return nil, ErrNeedsCgo }
func (*Token) OpenFields(context.Context, OpenFieldsRequest) ([][]byte, error) {
	return nil, ErrNeedsCgo
}
func (*Token) SealFields(context.Context, SealFieldsRequest) ([][]byte, error) {
	return nil, ErrNeedsCgo
}
func (*Token) Rewrap(context.Context, RewrapRequest) ([]Rewrapped, error) {
	return nil, ErrNeedsCgo
}
func (*Token) RewrapBatch(_ context.Context, reqs []RewrapRequest) []RewrapResult {
	res := make([]RewrapResult, len(reqs))
	for i := range res {
		res[i].Err = ErrNeedsCgo
	}
	return res
}
func (*Token) ProvePossession(context.Context, PossessionRequest) ([]byte, error) {
	return nil, ErrNeedsCgo
}
func (*Token) Sign(context.Context, string, []byte) ([]byte, error) { return nil, ErrNeedsCgo }
func (*Token) Signer(context.Context, string) (crypto.Signer, error) {
	return nil, ErrNeedsCgo
}
func (*Token) GenerateEd25519(context.Context, string, time.Time) (ed25519.PublicKey, error) {
	return nil, ErrNeedsCgo
}
func (*Token) FindEd25519(context.Context, string) (ed25519.PublicKey, error) {
	return nil, ErrNeedsCgo
}
func (*Token) EnsureEd25519(context.Context, string, time.Time) (ed25519.PublicKey, bool, error) {
	return nil, false, ErrNeedsCgo
}
func (*Token) SignEd25519(context.Context, string, []byte) ([]byte, error) {
	return nil, ErrNeedsCgo
}
func (*Token) WrapForBackup(context.Context, string, []byte, []byte) ([]byte, error) {
	return nil, ErrNeedsCgo
}
func (*Token) RestoreFromBackup(context.Context, string, []byte, []byte, []byte) (KeyInfo, error) {
	return KeyInfo{}, ErrNeedsCgo
}

func (*Token) ImportHMACKey(context.Context, string, []byte) error { return ErrNeedsCgo }
func (*Token) HMACSHA1(context.Context, string, []byte) ([]byte, error) {
	return nil, ErrNeedsCgo
}
func (*Token) DestroyHMACKey(context.Context, string) error                   { return ErrNeedsCgo }
func (*Token) ImportRelabelableHMACKey(context.Context, string, []byte) error { return ErrNeedsCgo }
func (*Token) RelabelHMACKey(context.Context, string, string) error           { return ErrNeedsCgo }
func (*Token) HMACKeyLabels(context.Context, string) ([]string, error)        { return nil, ErrNeedsCgo }
func (*Token) HMACKeyExtractable(context.Context, string) (bool, bool, bool, error) {
	return false, false, false, ErrNeedsCgo
}
