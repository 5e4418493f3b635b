package main

import (
	"fmt"
	"log/slog"
	"os"
	"strings"

	"golang.org/x/mod/sumdb/note"

	"custody/hsm"
	"custody/internal/ceremony"
	"custody/internal/config"
	"custody/internal/keys"
	"custody/internal/safefile"
)

// loadCeremonies reads the officers file of cfg.Ceremony; without one the
// ceremony routes answer ceremony_unavailable (nil).
func loadCeremonies(cfg config.Config, token *hsm.Token, registry *keys.Registry, log *slog.Logger) (*ceremony.Service, error) {
	c := cfg.Ceremony
	if c.OfficersFile == "" {
		log.Warn("no ceremony.officers_file in the configuration: escrow key ceremonies are refused")
		return nil, nil
	}
	offs, err := readOfficers(c.OfficersFile)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(c.OutputDir, 0o700); err != nil {
		return nil, fmt.Errorf("ceremony.output_dir: %w", err)
	}
	if st, err := os.Stat(c.OutputDir); err != nil || st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("ceremony.output_dir %s: must be a directory of mode 0700 (share files and manifests are the daemon user's alone)", c.OutputDir)
	}
	cer := ceremony.ServiceConfig{Officers: offs, OutputDir: c.OutputDir, Device: token, Keys: registry, MinApprovals: c.MinApprovals,
		PendingPerOfficer: c.PendingPerOfficer, LogOrigin: cfg.AccessLog.Origin, LogKeyLabel: cfg.AccessLog.SigningKeyLabel}
	if c.SOPINShares != "" {
		if cer.SOPIN, err = readSOPINRecord(c.SOPINShares, token.Info()); err != nil {
			return nil, err
		}
	} else {
		log.Warn("no ceremony.so_pin_shares: backups are refused (custodyd token init --officers splits a token's SO PIN)")
	}
	var vs []note.Verifier
	for _, k := range c.TrustedBackupSigners {
		v, err := note.NewVerifier(strings.TrimSpace(k))
		if err != nil {
			return nil, fmt.Errorf("ceremony.trusted_backup_signers: %w", err)
		}
		vs = append(vs, v)
	}
	cer.TrustedBackupSigners = note.VerifierList(vs...)
	log.Info("escrow key ceremonies enabled", "officers", len(offs.List), "output_dir", c.OutputDir,
		"backups", cer.SOPIN != nil, "trusted_backup_signers", len(vs))
	return ceremony.NewService(cer)
}

// readSOPINRecord reads the SO PIN share record and checks that it is
// this token's.
func readSOPINRecord(path string, info hsm.TokenInfo) (*ceremony.SOPINRecord, error) {
	data, err := safefile.Read(path, 1<<20)
	if err != nil {
		return nil, fmt.Errorf("ceremony.so_pin_shares: %w", err)
	}
	rec, err := ceremony.ParseSOPINRecord(data)
	if err != nil {
		return nil, fmt.Errorf("ceremony.so_pin_shares %s: %w", path, err)
	}
	if rec.TokenLabel != info.Label || rec.TokenSerial != "" && rec.TokenSerial != strings.TrimSpace(info.Serial) {
		return nil, fmt.Errorf("ceremony.so_pin_shares %s: the record is for token %q serial %q, this daemon's token is %q serial %q", path, rec.TokenLabel, rec.TokenSerial, info.Label, strings.TrimSpace(info.Serial))
	}
	return rec, nil
}

// readOfficers reads and parses the officers file at path. The file gets
// the policy file's checks (safefile.Read: a regular file owned by root or
// the daemon's uid, not group- or world-writable, at most
// ceremony.MaxOfficersFile bytes): whoever could write it could name
// themselves officers.
func readOfficers(path string) (*ceremony.Officers, error) {
	data, err := safefile.Read(path, ceremony.MaxOfficersFile)
	if err != nil {
		return nil, fmt.Errorf("ceremony.officers_file: %w", err)
	}
	offs, err := ceremony.ParseOfficers(data, nil)
	if err != nil {
		return nil, fmt.Errorf("ceremony.officers_file %s: %w", path, err)
	}
	return offs, nil
}

// reloadOfficers reads the officers file again (SIGHUP). A file that does
// not parse keeps the officers in force; a changed set cancels the pending
// ceremony requests (ceremony.Service.ReplaceOfficers).
func reloadOfficers(cfg config.Config, c *ceremony.Service, log *slog.Logger) error {
	offs, err := readOfficers(cfg.Ceremony.OfficersFile)
	if err != nil {
		log.Error("officers reload failed; keeping the officers in force", "err", err)
		return err
	}
	changed, cancelled := c.ReplaceOfficers(offs)
	switch {
	case !changed:
		log.Info("officers file unchanged", "officers", len(offs.List))
	case len(cancelled) > 0:
		log.Warn("officers changed: pending ceremony requests cancelled; open them again", "officers", len(offs.List), "cancelled", cancelled)
	default:
		log.Info("officers changed", "officers", len(offs.List))
	}
	return nil
}
