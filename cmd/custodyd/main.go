// Command custodyd is the key custody daemon: it keeps participant keys, the
// audit escrow key and the envelope signing key in a PKCS#11 token and
// serves encrypt and decrypt over a local Unix socket.
//
// This file is wiring only: configuration, start-up order, signals. The
// logic lives in hsm/ and internal/.
package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"custody/hsm"
	"custody/internal/auditlog"
	"custody/internal/ceremony"
	"custody/internal/compliance"
	"custody/internal/config"
	"custody/internal/durable"
	"custody/internal/keys"
	"custody/internal/metrics"
	"custody/internal/mfa"
	"custody/internal/orders"
	"custody/internal/policy"
	"custody/internal/server"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

const usage = `custodyd — key custody daemon (PKCS#11 keys, confidential transaction envelopes)

Usage:
  custodyd run          [--config FILE] [--log-format text|json]
        Serve the API on the configured Unix socket until SIGTERM or SIGINT.
        On first start, creates the escrow and signing keys on the token.
        SIGHUP reloads the policy file and the officers file; an invalid file keeps
        what is in force. Changed officers cancel pending ceremony requests.
  custodyd token init   [--config FILE] --officers FILE --so-pin-threshold M --out DIR
  custodyd token init   [--config FILE] --no-backups
        Initialise the configured token label on a free slot, with the user PIN
        from pkcs11.pin_file (mode 0400 or 0600) and a new random SO PIN that is
        never written: split M-of-N among the officers of FILE (one age-encrypted
        share file each in DIR, and DIR/so-pin.json for ceremony.so_pin_shares),
        or given to no one (--no-backups: the escrow key can never be backed up).
  custodyd policy check FILE
        Validate a policy file and print a summary; exit status 1 if invalid.
  custodyd config check [--config FILE]
        Validate the configuration (defaults when no file) and print it.
  custodyd version

Without --config, the built-in defaults apply (paths relative to the working
directory): token "custody" of /usr/lib/softhsm/libsofthsm2.so with the PIN
in softhsm/user.pin, socket run/custodyd.sock, policy policies/example.json.
See README.md and docs/ for the configuration file, the API and the policy.
`

func main() {
	if err := run(os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "custodyd:", err)
		os.Exit(1)
	}
}

func run(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return errors.New("a command is required")
	}
	switch cmd := args[0]; {
	case cmd == "run":
		return cmdRun(args[1:], stderr)
	case cmd == "token" && len(args) > 1 && args[1] == "init":
		return cmdTokenInit(args[2:], stdout)
	case cmd == "policy" && len(args) > 1 && args[1] == "check":
		return cmdPolicyCheck(args[2:], stdout)
	case cmd == "config" && len(args) > 1 && args[1] == "check":
		return cmdConfigCheck(args[2:], stdout)
	case cmd == "version":
		fmt.Fprintln(stdout, "custodyd", version)
		return nil
	case cmd == "help" || cmd == "-h" || cmd == "--help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	fmt.Fprint(stderr, usage)
	return fmt.Errorf("unknown command %q", args[0])
}

func newFlags(name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.Usage = func() { fmt.Fprintf(fs.Output(), "usage of custodyd %s:\n", name); fs.PrintDefaults() }
	return fs
}

// loadConfig loads the configuration and exports SOFTHSM2_CONF when the
// configuration names one and the environment does not.
func loadConfig(path string) (config.Config, error) {
	cfg, err := config.Load(path)
	if err != nil {
		return cfg, err
	}
	if cfg.PKCS11.SoftHSMConf != "" && os.Getenv("SOFTHSM2_CONF") == "" {
		if _, err := os.Stat(cfg.PKCS11.SoftHSMConf); err == nil {
			os.Setenv("SOFTHSM2_CONF", cfg.PKCS11.SoftHSMConf)
		}
	}
	return cfg, nil
}

func cmdRun(args []string, stderr io.Writer) error {
	fs := newFlags("run")
	cfgPath := fs.String("config", "", "configuration file (JSON); defaults when empty")
	logFormat := fs.String("log-format", "text", "log format: text or json")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var log *slog.Logger
	switch *logFormat {
	case "text":
		log = slog.New(slog.NewTextHandler(stderr, nil))
	case "json":
		log = slog.New(slog.NewJSONHandler(stderr, nil))
	default:
		return fmt.Errorf("--log-format: %q is not text or json", *logFormat)
	}
	cfg, err := loadConfig(*cfgPath)
	if err != nil {
		return err
	}
	policies, err := policy.NewStore(cfg.PolicyFile)
	if err != nil {
		return fmt.Errorf("policy: %w", err)
	}
	log.Info("policy loaded", "file", cfg.PolicyFile, "summary", policies.Current().Summary())

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	token, err := hsm.Open(ctx, hsm.Config{
		ModulePath:   cfg.PKCS11.Module,
		TokenLabel:   cfg.PKCS11.TokenLabel,
		PINFile:      cfg.PKCS11.PINFile,
		Sessions:     cfg.PKCS11.Sessions,
		RecycleAfter: cfg.PKCS11.RecycleAfter,
		DEKCache: hsm.DEKCacheConfig{Entries: cfg.PKCS11.DEKCache.Entries, MaxAge: cfg.PKCS11.DEKCache.MaxAge.Std(),
			Recheck: cfg.PKCS11.DEKCache.Recheck.Std()},
		KeyRecheck: cmp.Or(cfg.PKCS11.KeyRecheck.Std(), -1), // "0s": no copies
	}, log)
	if err != nil {
		return fmt.Errorf("opening the token: %w", err)
	}
	defer token.Close()
	setProcs(log, token.Info().Sessions)
	meters := metrics.New()
	meters.WatchToken(token)
	metered := meters.Meter(token)
	registry, err := startupRetry(ctx, log, "loading the keys", func() (*keys.Registry, error) { return keys.Load(ctx, metered, log) })
	if err != nil {
		return err
	}
	if cfg.Ceremony.AutoGenesisOn() {
		// Demo only: production sets ceremony.auto_genesis false and the
		// officers run `custodyctl ceremony genesis` (docs/ceremonies.md).
		if _, err := registry.Genesis(ctx, time.Now(), "auto-genesis at daemon start (ceremony.auto_genesis, demo only)"); err != nil {
			return err
		}
	} else if done, err := registry.GenesisDone(ctx); err != nil {
		return err
	} else if !done {
		log.Warn("the escrow key genesis ceremony has not run on this token: audit decrypts are refused until officers run `custodyctl ceremony genesis`")
	}
	registry.SetRotateAfter(cfg.Keys.RotateAfter.Std())
	meters.WatchKeys(registry, cfg.Keys.RotateAfter.Std())
	type ensured struct {
		signer  *auditlog.DeviceSigner
		created bool
	}
	ls, err := startupRetry(ctx, log, "finding the access log key", func() (ensured, error) {
		s, created, err := auditlog.EnsureDeviceSigner(ctx, token, cfg.AccessLog.Origin, cfg.AccessLog.SigningKeyLabel, time.Now())
		return ensured{s, created}, err
	})
	if err != nil {
		return fmt.Errorf("access log key: %w", err)
	}
	logSigner, created := ls.signer, ls.created
	if created {
		log.Info("created the access-log checkpoint key on the token", "label", cfg.AccessLog.SigningKeyLabel, "verifier_key", logSigner.VerifierKey())
	}
	alog, err := auditlog.Open(ctx, cfg.AccessLog, logSigner, log)
	if err != nil {
		return fmt.Errorf("access log: %w", err)
	}
	// Closed last, after the server drained: the final entries and a
	// signed checkpoint are written then.
	defer func() {
		if err := alog.Close(); err != nil {
			log.Error("closing the access log", "err", err)
		}
	}()
	meters.WatchLog(alog)
	// Court orders: without a vault section the audit routes answer
	// vault_unavailable; with one, a Vault that cannot be reached or a token
	// that is not there yet at start is not fatal either (the first run
	// builds its dev Vault in the background): every audit decrypt checks
	// Vault and fails closed, and the checker authenticates as soon as it can.
	var checker server.OrderChecker
	var status server.StatusStore // nil: participant status is not checked
	var second server.MFA         // nil: requests that need a second factor are refused
	if cfg.Vault != nil {
		c, err := orders.StartChecker(ctx, *cfg.Vault, orders.Options{Log: log})
		if err != nil {
			return fmt.Errorf("vault: %w", err)
		}
		go c.Run(ctx)
		defer c.Close()
		checker = meters.MeterOrders(c)
		// Rotations take a lease in Vault first, so that a fleet sharing
		// the token makes each new key version once (docs/fleet.md).
		registry.SetCoordinator(c)
		log.Info("court orders checked against Vault", "address", cfg.Vault.Address, "quorum", cfg.Vault.Quorum, "signers", len(cfg.Vault.Signers))
		// Second factors: seeds on the token, replay and lockout state in Vault.
		second = &mfa.Service{Keys: token, Issuer: "custody", Verifier: mfa.Verifier{Device: token, KV: c.KV(), Path: "custody/mfa",
			IsConflict: func(err error) bool { return errors.Is(err, orders.ErrCASConflict) },
			NotFound:   func(err error) bool { return errors.Is(err, hsm.ErrNotFound) },
			IsExists:   func(err error) bool { return errors.Is(err, hsm.ErrExists) }}}
		if sc, on := cfg.StatusConfig(); on {
			st, err := compliance.NewStore(c.KV(), sc, compliance.Options{Log: log})
			if err != nil {
				return err
			}
			status = st
			log.Info("participant status checked against Vault", "path", sc.Path, "cache_ttl", sc.CacheTTL.String(), "max_stale", sc.MaxStale.String())
		} else {
			log.Warn("participant_status.enabled is false: participant status is not checked")
		}
	} else {
		log.Warn("no vault section in the configuration: audit decrypts are refused and participant status is not checked")
	}

	ceremonies, err := loadCeremonies(cfg, token, registry, log)
	if err != nil {
		return err
	}

	srv, err := server.New(server.Deps{
		Token:      metered,
		Rewrapper:  metered,
		Prover:     metered,
		Observer:   meters,
		Keys:       registry,
		Policy:     policies,
		Recorder:   alog,
		AccessLog:  alog,
		Orders:     checker,
		Status:     status,
		MFA:        second,
		Ceremonies: ceremonies,
		Log:        log,
		Limits:     cfg.Limits,
		Version:    version,
	})
	if err != nil {
		return err
	}
	// daemonEvent records what the daemon did on its own through the
	// server's one recording path (RecordDaemon: the same outcome and code
	// rules, normalization and log_unavailable handling as every request);
	// code is the entry's code when err is not nil. The server is built
	// before the first event, so daemon.start is recorded once the daemon
	// is assembled, just before it listens.
	daemonEvent := func(op, code string, err error) {
		e := auditlog.Entry{Operation: op}
		if err != nil {
			e.Detail, err = err.Error(), server.DaemonFailure(code, err)
		}
		if rerr := srv.RecordDaemon(context.Background(), e, err); rerr != nil {
			log.Error("access log refused a daemon event", "op", op, "err", rerr)
		}
	}
	daemonEvent("daemon.start", "", nil)
	ln, err := server.Listen(cfg.Socket.Path, cfg.SocketMode())
	if err != nil {
		return fmt.Errorf("socket: %w", err)
	}
	served := make(chan error, 2)
	go func() { served <- srv.Serve(ln) }()
	// The due-rotation pass lives beside the keys; its decisions are
	// recorded through the server's one recording path.
	go keys.NewScheduler(registry, nil, log, srv.RecordDaemon).Run(ctx, cfg.Keys.RotationCheck.Std())
	// Other daemons on the same token (a fleet) create and retire keys too.
	refresh := cfg.Keys.RefreshInterval.Std()
	if refresh == 0 {
		refresh = 10 * time.Second
	}
	go registry.Watch(ctx, refresh)
	if cfg.Metrics.Listen != "" {
		mln, err := listenMetrics(cfg.Metrics.Listen)
		if err != nil {
			return fmt.Errorf("metrics.listen: %w", err)
		}
		msrv := &http.Server{Handler: meters.Handler(), ReadHeaderTimeout: 10 * time.Second}
		defer msrv.Close()
		go func() {
			if err := msrv.Serve(mln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				served <- fmt.Errorf("metrics listener: %w", err)
			}
		}()
		log.Info("metrics served", "listen", cfg.Metrics.Listen)
	}
	go watchToken(ctx, token, log)
	notify("READY=1")
	log.Info("custodyd ready", "socket", cfg.Socket.Path, "mode", cfg.Socket.Mode, "token", cfg.PKCS11.TokenLabel, "capabilities", token.Capabilities().String())
	fmt.Fprintf(stderr, "\ncustodyd is serving on %s. Try, from another terminal:\n"+
		"  bin/custodyctl --socket %s health\n"+
		"  curl -s --unix-socket %s http://custody/v1/health\n"+
		"  make demo   # participants, encrypt, decrypt, a court order, the access log\n"+
		"Stop with Ctrl-C.\n\n", cfg.Socket.Path, cfg.Socket.Path, cfg.Socket.Path)

	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	for {
		select {
		case <-hup:
			notify("RELOADING=1")
			err := policies.Reload()
			meters.PolicyReload(err)
			daemonEvent("policy.reload", "invalid_policy", err)
			if err != nil {
				log.Error("policy reload failed; keeping the previous policy", "file", cfg.PolicyFile, "err", err)
			} else {
				log.Info("policy reloaded", "file", cfg.PolicyFile, "summary", policies.Current().Summary())
			}
			if ceremonies != nil {
				err := reloadOfficers(cfg, ceremonies, log)
				daemonEvent("ceremony.officers_reload", "invalid_officers", err)
			}
			notify("READY=1")
		case err := <-served:
			return err
		case <-ctx.Done():
			notify("STOPPING=1")
			log.Info("shutting down: finishing in-flight requests", "deadline", cfg.ShutdownTimeout)
			sctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout.Std())
			defer cancel()
			if err := srv.Shutdown(sctx); err != nil {
				log.Warn("shutdown deadline passed", "err", err)
			}
			daemonEvent("daemon.stop", "", nil)
			return nil
		}
	}
}

func cmdTokenInit(args []string, stdout io.Writer) error {
	fs := newFlags("token init")
	cfgPath := fs.String("config", "", "configuration file (JSON); defaults when empty")
	officersFile := fs.String("officers", "", "officers file: split the new token's SO PIN among these officers")
	threshold := fs.Int("so-pin-threshold", 0, "M: how many officers' SO PIN shares a backup needs (2 to the number of officers)")
	outDir := fs.String("out", "", "new directory (mode 0700) for so-pin.json and one SO PIN share file per officer")
	noBackups := fs.Bool("no-backups", false, "give the SO PIN to no one: the token works, but its escrow key can never be backed up (first-run demo)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("token init: unexpected argument %q", fs.Arg(0))
	}
	split := *officersFile != "" || *threshold != 0 || *outDir != ""
	switch {
	case split && *noBackups:
		return errors.New("token init: --no-backups and --officers exclude each other")
	case !split && !*noBackups:
		return errors.New("token init: give --officers FILE --so-pin-threshold M --out DIR to split the SO PIN among the officers, or --no-backups (docs/ceremonies.md)")
	case split && (*officersFile == "" || *threshold == 0 || *outDir == ""):
		return errors.New("token init: --officers, --so-pin-threshold and --out go together")
	}
	cfg, err := loadConfig(*cfgPath)
	if err != nil {
		return err
	}
	raw, err := ceremony.GenerateSOPIN()
	if err != nil {
		return err
	}
	defer clear(raw)
	pin := ceremony.SOPINText(raw)
	defer clear(pin)
	label := cfg.PKCS11.TokenLabel
	if !split {
		if err := hsm.InitToken(context.Background(), cfg.PKCS11.Module, label, pin, cfg.PKCS11.PINFile); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "token %q initialised; user PIN from %s\nno one holds its SO PIN: its escrow key can never be backed up (re-initialise with --officers for that)\n", label, cfg.PKCS11.PINFile)
		return nil
	}
	offs, err := readOfficers(*officersFile)
	if err != nil {
		return err
	}
	// Shares first, so that a token never ends up with an SO PIN that no
	// file holds; the record is written again with the serial once the
	// token exists.
	rec, files, err := ceremony.SplitSOPIN(raw, label, "", offs.List, *threshold, time.Now())
	if err != nil {
		return err
	}
	if err := os.Mkdir(*outDir, 0o700); err != nil {
		return fmt.Errorf("token init: --out: %w (it must not exist yet)", err)
	}
	var names []string
	for i, f := range files {
		name := fmt.Sprintf("so-pin-share-%d-%s.age", i+1, offs.List[i].Name)
		if err := durable.Create(filepath.Join(*outDir, name), f, 0o600); err != nil {
			return err
		}
		names = append(names, name)
	}
	if err := hsm.InitToken(context.Background(), cfg.PKCS11.Module, label, pin, cfg.PKCS11.PINFile); err != nil {
		os.RemoveAll(*outDir)
		return err
	}
	if tok, err := hsm.Open(context.Background(), hsm.Config{ModulePath: cfg.PKCS11.Module, TokenLabel: label, PINFile: cfg.PKCS11.PINFile}, slog.New(slog.DiscardHandler)); err == nil {
		rec.TokenSerial = tokenSerial(tok.Info().Serial)
		tok.Close()
	}
	if err := durable.Create(filepath.Join(*outDir, "so-pin.json"), rec.Marshal(), 0o600); err != nil {
		return fmt.Errorf("token %q is initialised and the shares are written, but: %w", label, err)
	}
	fmt.Fprintf(stdout, "token %q initialised; user PIN from %s\n", label, cfg.PKCS11.PINFile)
	fmt.Fprintf(stdout, "its SO PIN is split %d-of-%d (set %s) and was never written:\n", rec.Threshold, rec.Total, rec.SetID)
	for i, n := range names {
		fmt.Fprintf(stdout, "  %s  for %s only\n", filepath.Join(*outDir, n), offs.List[i].Name)
	}
	fmt.Fprintf(stdout, "set ceremony.so_pin_shares to a copy of %s; give each officer their share file\n", filepath.Join(*outDir, "so-pin.json"))
	return nil
}

// tokenSerial keeps the printable part of a token serial (SoftHSM pads it).
func tokenSerial(s string) string { return strings.TrimSpace(s) }

func cmdPolicyCheck(args []string, stdout io.Writer) error {
	if len(args) != 1 {
		return errors.New("usage: custodyd policy check FILE")
	}
	p, err := policy.Load(args[0])
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s: ok (%s)\n", args[0], p.Summary())
	return nil
}

func cmdConfigCheck(args []string, stdout io.Writer) error {
	fs := newFlags("config check")
	cfgPath := fs.String("config", "", "configuration file (JSON); defaults when empty")
	if err := fs.Parse(args); err != nil {
		return err
	}
	cfg, err := config.Load(*cfgPath)
	if err != nil {
		return err
	}
	out, _ := json.MarshalIndent(cfg, "", "  ")
	fmt.Fprintf(stdout, "%s\n", out)
	return nil
}

// listenMetrics opens the metrics listener: "unix:PATH" (a socket of mode
// 0660, replacing a stale one) or a loopback TCP address (config checked it).
func listenMetrics(addr string) (net.Listener, error) {
	if path, ok := strings.CutPrefix(addr, "unix:"); ok {
		return server.Listen(path, 0o660)
	}
	return net.Listen("tcp", addr)
}

// startupTokenWait bounds how long startupRetry waits for the token.
var startupTokenWait = 30 * time.Second

// startupRetry runs fn, a step of the daemon's start that reads the token,
// until it succeeds, fails with an error other than hsm.ErrUnavailable, ctx
// ends, or startupTokenWait has passed (then fn's last error), waiting
// 100 ms, doubling to 2 s, between tries and logging each. Measured on
// SoftHSM 2.6.1: while one process creates objects on the shared token,
// another may see the token absent for a moment (CKR_TOKEN_NOT_PRESENT, and
// no token with its label in the slot list): a daemon starting beside
// others must not exit for that (docs/fleet.md). At run time the pool's
// rebuild on the next request does the same.
func startupRetry[T any](ctx context.Context, log *slog.Logger, what string, fn func() (T, error)) (T, error) {
	deadline := time.Now().Add(startupTokenWait)
	wait := 100 * time.Millisecond
	for {
		v, err := fn()
		if err == nil || !errors.Is(err, hsm.ErrUnavailable) || time.Now().Add(wait).After(deadline) {
			return v, err
		}
		log.Warn("hsm: token unavailable at start; trying again", "step", what, "in", wait.String(), "err", err)
		select {
		case <-ctx.Done():
			return v, err
		case <-time.After(wait):
		}
		wait = min(2*wait, 2*time.Second)
	}
}

// tokenWatchInterval is how often the daemon pings the token on its own, so
// that an outage is noticed (and health, metrics and requests say
// hsm_unavailable) and the recovery happens without waiting for a request.
const tokenWatchInterval = 2 * time.Second

// watchToken pings the token every tokenWatchInterval until ctx ends and
// logs each change between reachable and unreachable.
func watchToken(ctx context.Context, token *hsm.Token, log *slog.Logger) {
	up := true
	t := time.NewTicker(tokenWatchInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		pctx, cancel := context.WithTimeout(ctx, tokenWatchInterval)
		err := token.Ping(pctx)
		cancel()
		switch {
		case err != nil && up:
			log.Error("hsm: token unreachable; requests get hsm_unavailable until it is back", "err", err)
		case err == nil && !up:
			log.Info("hsm: token reachable again", "rebuilds", token.Info().Rebuilds)
		}
		up = err == nil
	}
}

// setProcs gives the Go scheduler one P more per token session
// (hsm.SetProcs), so that live requests find a P while every session is
// in a device call.
func setProcs(log *slog.Logger, sessions int) {
	cpus := runtime.GOMAXPROCS(0)
	if procs, fromEnv := hsm.SetProcs(sessions); fromEnv {
		log.Info("go scheduler: GOMAXPROCS from the environment", "procs", procs)
	} else {
		log.Info("go scheduler: one P per CPU and one per token session", "procs", procs, "cpus", cpus, "sessions", sessions)
	}
}
