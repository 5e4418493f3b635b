package hsm

import (
	"errors"
	"fmt"
	"testing"

	"custody/internal/device"
)

// TestDeviceAliases checks that hsm's sentinel errors are package device's
// values, so that errors.Is holds across both names: callers that moved to
// device (keys, ceremony, envelope) still recognize what the token returns.
func TestDeviceAliases(t *testing.T) {
	for _, c := range []struct{ hsm, dev error }{
		{ErrNotFound, device.ErrNotFound}, {ErrExists, device.ErrExists}, {ErrIntegrity, device.ErrIntegrity},
		{ErrUnavailable, device.ErrUnavailable}, {ErrUnsupported, device.ErrUnsupported},
		{ErrInvalidRequest, device.ErrInvalidRequest}, {ErrSOLogin, device.ErrSOLogin},
	} {
		if !errors.Is(fmt.Errorf("hsm: op: %w", c.hsm), c.dev) || !errors.Is(fmt.Errorf("x: %w", c.dev), c.hsm) {
			t.Errorf("%v and %v are different errors", c.hsm, c.dev)
		}
	}
	if X25519 != device.X25519 || P256 != device.P256 || KDFECBContext != device.KDFECBContext || P256.String() != "P-256" {
		t.Error("algorithm constants differ")
	}
}
