package server

// SetBeforeRename sets the hook Listen runs just before it renames the
// socket onto its path (nil: none).
func SetBeforeRename(f func(path string)) { beforeRename = f }
