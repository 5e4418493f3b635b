package main

import (
	"fmt"
	"log/slog"
	"os"

	"custody/hsm"
	"custody/internal/ceremony"
	"custody/internal/config"
	"custody/internal/safefile"
	"custody/internal/server"
)

// loadCeremonies reads the officers file of cfg.Ceremony; without one the
// ceremony routes answer ceremony_unavailable (nil).
func loadCeremonies(cfg config.Config, token *hsm.Token, log *slog.Logger) (*server.Ceremonies, error) {
	c := cfg.Ceremony
	if c.OfficersFile == "" {
		log.Warn("no ceremony.officers_file in the configuration: escrow key ceremonies are refused")
		return nil, nil
	}
	offs, err := readOfficers(c.OfficersFile)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(c.OutputDir, 0o755); err != nil {
		return nil, fmt.Errorf("ceremony.output_dir: %w", err)
	}
	log.Info("escrow key ceremonies enabled", "officers", len(offs.List), "output_dir", c.OutputDir)
	return &server.Ceremonies{Officers: offs, SOPINFile: c.SOPINFile, OutputDir: c.OutputDir, Device: token,
		LogOrigin: cfg.AccessLog.Origin, LogKeyLabel: cfg.AccessLog.SigningKeyLabel}, nil
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
// ceremony requests (server.Ceremonies.ReplaceOfficers).
func reloadOfficers(cfg config.Config, c *server.Ceremonies, log *slog.Logger) error {
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
