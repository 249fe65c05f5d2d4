package main

import (
	"flag"
	"fmt"
	"time"

	"github.com/cachesync/cachesync/seckill/auth"
)

var tokenCommand = &command{
	name:    "token",
	summary: "mint a buyer's JWT with the configured HMAC secret (demo, tests)",
	help: `Prints a JWT for user ID, signed HS256 with seckill.auth.jwt.hs256_secret
(or CACHESYNC_JWT_SECRET), with the configured user claim, issuer and audience,
valid for -ttl. Send it as "Authorization: Bearer <token>" to the sale's
endpoints. Only the token goes to stdout:
  TOKEN=$(cachesync token -config F -user 42)
Tokens for a public_key configuration come from the identity provider that
holds the private key; this command refuses them.`,
	setup: func(c *command, fs *flag.FlagSet, o *stdio) func([]string) int {
		path := configFlag(fs)
		user := fs.Int64("user", 0, "the user `ID` (a positive integer, required)")
		ttl := fs.Duration("ttl", time.Hour, "how long the token is valid (`DURATION`)")
		return noArgs(c, o, func() int {
			if *user <= 0 {
				return usageError(c, o, "-user: want a positive integer")
			}
			if *ttl <= 0 {
				return usageError(c, o, "-ttl: want a positive duration")
			}
			cfg, ok := loadConfig(c, o, *path)
			if !ok {
				return 2
			}
			if cfg.Seckill.Auth.Mode != auth.ModeJWT {
				fmt.Fprintf(o.err, "cachesync %s: seckill.auth.mode is %q, not jwt\n", c.name, cfg.Seckill.Auth.Mode)
				return 2
			}
			tok, err := auth.Mint(cfg.Seckill.Auth.JWT, *user, *ttl, time.Now())
			if err != nil {
				fmt.Fprintf(o.err, "cachesync %s: %v\n", c.name, err)
				return 1
			}
			fmt.Fprintln(o.out, tok)
			return 0
		})
	},
}
