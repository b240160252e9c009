// A throwaway PKI for TLS tests: a CA, a server certificate for 127.0.0.1/localhost and a client
// certificate, all ECDSA P-256, signed by the CA and valid for one day. Made with the openssl
// command line (the same commands docs/nats/README.md shows), so a missing openssl is a loud
// failure, never a skip.

/** Paths of the PEM files {@linkcode makeTestPki} wrote. */
export interface TestPki {
  /** The CA certificate (trust anchor for both sides). */
  readonly caCert: string;
  /** The server certificate: CN=localhost, subjectAltName IP:127.0.0.1 and DNS:localhost. */
  readonly serverCert: string;
  /** The server's private key (PKCS#8). */
  readonly serverKey: string;
  /** The client certificate: CN=backbeat-test-client, extendedKeyUsage clientAuth. */
  readonly clientCert: string;
  /** The client's private key (PKCS#8). */
  readonly clientKey: string;
}

/** Longest wait for one openssl command, ms. */
const OPENSSL_TIMEOUT_MS = 20_000;

const SERVER_EXT = [
  "basicConstraints = critical, CA:FALSE",
  "keyUsage = critical, digitalSignature, keyEncipherment",
  "extendedKeyUsage = serverAuth",
  "subjectAltName = IP:127.0.0.1, DNS:localhost",
  "",
].join("\n");

const CLIENT_EXT = [
  "basicConstraints = critical, CA:FALSE",
  "keyUsage = critical, digitalSignature",
  "extendedKeyUsage = clientAuth",
  "",
].join("\n");

async function openssl(cwd: string, args: string[]): Promise<void> {
  let child: Deno.ChildProcess;
  try {
    child = new Deno.Command("openssl", {
      args,
      cwd,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) {
      throw new Error(
        "openssl is not installed: the TLS tests need it to make their certificates (apt-get install -y openssl)",
      );
    }
    throw err;
  }
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<"timeout">((resolve) => {
    timer = setTimeout(() => resolve("timeout"), OPENSSL_TIMEOUT_MS);
  });
  const out = child.output();
  const result = await Promise.race([out, timeout]);
  clearTimeout(timer);
  if (result === "timeout") {
    try {
      child.kill("SIGKILL");
    } catch { /* already gone */ }
    await out.catch(() => {});
    throw new Error(`openssl ${args[0]} did not finish within ${OPENSSL_TIMEOUT_MS} ms`);
  }
  if (!result.success) {
    const err = new TextDecoder().decode(result.stderr).trim();
    throw new Error(`openssl ${args.join(" ")} failed (exit ${result.code}): ${err}`);
  }
}

function serial(): string {
  // A random positive 64-bit serial: no serial file, and no two test runs share one.
  const bytes = crypto.getRandomValues(new Uint8Array(8));
  bytes[0] &= 0x7f;
  bytes[0] |= 0x01;
  return "0x" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

async function leaf(
  dir: string,
  name: string,
  subject: string,
  ext: string,
): Promise<void> {
  await Deno.writeTextFile(`${dir}/${name}.ext`, ext);
  await openssl(dir, [
    "genpkey",
    "-algorithm",
    "EC",
    "-pkeyopt",
    "ec_paramgen_curve:P-256",
    "-out",
    `${name}-key.pem`,
  ]);
  await openssl(dir, [
    "req",
    "-new",
    "-key",
    `${name}-key.pem`,
    "-subj",
    subject,
    "-out",
    `${name}.csr`,
  ]);
  await openssl(dir, [
    "x509",
    "-req",
    "-in",
    `${name}.csr`,
    "-CA",
    "ca.pem",
    "-CAkey",
    "ca-key.pem",
    "-set_serial",
    serial(),
    "-days",
    "1",
    "-sha256",
    "-extfile",
    `${name}.ext`,
    "-out",
    `${name}.pem`,
  ]);
  await Deno.remove(`${dir}/${name}.csr`);
  await Deno.remove(`${dir}/${name}.ext`);
}

/**
 * Makes a test CA and, signed by it, a server certificate for 127.0.0.1 and localhost and a
 * client certificate, all ECDSA P-256 and valid for one day, as PEM files in `dir`.
 *
 * @param dir An existing directory (a temporary one: the CA key is left there too).
 * @returns The paths of the certificates and keys.
 * @throws {Error} When openssl is not installed or one of its commands fails.
 *
 * @example A TLS server for one test
 * ```ts ignore
 * const dir = await Deno.makeTempDir();
 * const pki = await makeTestPki(dir);
 * // tls { cert_file: pki.serverCert, key_file: pki.serverKey, ca_file: pki.caCert, verify: true }
 * ```
 */
export async function makeTestPki(dir: string): Promise<TestPki> {
  await openssl(dir, [
    "genpkey",
    "-algorithm",
    "EC",
    "-pkeyopt",
    "ec_paramgen_curve:P-256",
    "-out",
    "ca-key.pem",
  ]);
  await openssl(dir, [
    "req",
    "-x509",
    "-new",
    "-key",
    "ca-key.pem",
    "-sha256",
    "-days",
    "1",
    "-subj",
    "/O=BACKBEAT test/CN=BACKBEAT test CA",
    "-addext",
    "basicConstraints = critical, CA:TRUE",
    "-addext",
    "keyUsage = critical, keyCertSign, cRLSign",
    "-set_serial",
    serial(),
    "-out",
    "ca.pem",
  ]);
  await leaf(dir, "server", "/O=BACKBEAT test/CN=localhost", SERVER_EXT);
  await leaf(dir, "client", "/O=BACKBEAT test/CN=backbeat-test-client", CLIENT_EXT);
  return {
    caCert: `${dir}/ca.pem`,
    serverCert: `${dir}/server.pem`,
    serverKey: `${dir}/server-key.pem`,
    clientCert: `${dir}/client.pem`,
    clientKey: `${dir}/client-key.pem`,
  };
}
