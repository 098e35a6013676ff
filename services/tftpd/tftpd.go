// Binary tftpd serves each node's firmware, kernel and generated boot config over TFTP.
package main

import (
	"context"

	"github.com/ociboot/ociboot/appliance/service"
)

func main() {
	service.Main("tftpd", ":9069", func(ctx context.Context, env *service.Env) error {
		env.SetStatus(func() any {
			return map[string]any{"service": "tftpd", "mode": env.Config.Mode, "interface": env.Config.Interface}
		})
		<-ctx.Done()
		return ctx.Err()
	})
}
