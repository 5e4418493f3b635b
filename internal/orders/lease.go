package orders

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"custody/internal/keys"
)

// LeasesPath is where fleet leases live in the KV mount:
// <mount>/data/custody/leases/<name> (policies/vault/custodyd.hcl grants
// read, create and update on it).
const LeasesPath = "custody/leases"

// lease is the value of a lease entry.
type lease struct {
	V      int       `json:"v"`
	Holder string    `json:"holder"` // host/pid/random of the daemon that took it
	Until  time.Time `json:"until"`  // the lease ends then (or earlier, when released)
}

// holderID names this process among the fleet's daemons.
var holderID = func() string {
	host, _ := os.Hostname()
	b := make([]byte, 6)
	rand.Read(b)
	return fmt.Sprintf("%s/%d/%s", host, os.Getpid(), hex.EncodeToString(b))
}()

// Claim takes the fleet lease name for ttl with KV version 2 check-and-set:
// a new entry is created with cas=0, an entry whose lease ended (or that
// this process holds) is replaced with cas=its version; any other entry,
// or a lost check-and-set race, is keys.ErrLeaseHeld. Two daemons can
// therefore never both hold a lease while their clocks agree within the
// lease's margin. Vault unreachable, sealed or refusing is the usual
// ErrUnavailable, ErrSealed, ErrVaultDenied, ErrTimeout: the caller does not
// act. release writes the lease as ended (best effort; it ends after ttl
// anyway). It implements keys.Coordinator.
func (c *Checker) Claim(ctx context.Context, name string, ttl time.Duration) (release func(context.Context), err error) {
	if name == "" || strings.Contains(name, "..") {
		return nil, fmt.Errorf("%w: lease name %q", ErrVaultError, name)
	}
	if err := c.Ready(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, time.Duration(c.cfg.Timeout))
	defer cancel()
	path := c.paths.data(LeasesPath, name)
	data, ver, err := c.kv.read(ctx, path)
	if err != nil {
		return nil, c.wrapUnavailable(err)
	}
	now := c.clock()
	if data != nil {
		var cur lease
		if err := json.Unmarshal(data, &cur); err != nil || cur.V != 1 {
			c.log.Warn("vault: replacing a malformed fleet lease", "lease", name)
		} else if cur.Holder != holderID && now.Before(cur.Until) {
			return nil, fmt.Errorf("%w: %s until %s", keys.ErrLeaseHeld, name, cur.Until.Format(time.RFC3339))
		}
	}
	mine := lease{V: 1, Holder: holderID, Until: now.Add(ttl).UTC()}
	nv, err := c.kv.write(ctx, path, mine, ver)
	if errors.Is(err, errCAS) {
		return nil, fmt.Errorf("%w: %s (taken a moment ago)", keys.ErrLeaseHeld, name)
	}
	if err != nil {
		return nil, c.wrapUnavailable(err)
	}
	return func(ctx context.Context) {
		ctx, cancel := context.WithTimeout(ctx, time.Duration(c.cfg.Timeout))
		defer cancel()
		ended := lease{V: 1, Holder: holderID, Until: c.clock().UTC()}
		if _, err := c.kv.write(ctx, path, ended, nv); err != nil {
			c.log.Warn("vault: releasing a fleet lease failed; it ends by itself", "lease", name, "until", mine.Until, "err", err)
		}
	}, nil
}

func (c *Checker) clock() time.Time {
	if c.now != nil {
		return c.now()
	}
	return time.Now()
}

func (c *Checker) wrapUnavailable(err error) error {
	if errors.Is(err, ErrUnavailable) {
		return c.unavailable(err)
	}
	return err
}
