// The one ajv configuration BACKBEAT uses, both to generate the precompiled validators of the
// built-in schemas (_standalone.ts) and to compile custom schemas at run time. Loading ajv costs
// tens of milliseconds, so only those two paths import this module.

import { _, Ajv, type ValidateFunction } from "ajv";
import addFormats from "ajv-formats";
import type { JsonSchema } from "./_builtin_schemas.ts";

/**
 * A configured ajv instance: every error (`allErrors`), strict mode (unknown keywords and type
 * ambiguities are schema errors), ajv-formats, and `version` as an annotation keyword.
 *
 * @param standalone Emit source for ajv's standalone code generator (ESM), with formats taken
 * from an identifier `formats` that the generated module defines.
 */
export function createAjv(standalone = false): Ajv {
  const ajv = new Ajv({
    allErrors: true,
    strict: true,
    code: standalone ? { source: true, esm: true, lines: true, formats: _`formats` } : {},
  });
  addFormats.default(ajv);
  // `version` is the contract's semver: an annotation with no validation meaning.
  ajv.addVocabulary(["version"]);
  return ajv;
}

/**
 * Compiles schemas with a fresh ajv instance.
 *
 * @param schemas The schemas, each labelled for error messages.
 * @returns One validate function per schema, in order.
 * @throws {TypeError} When ajv rejects a schema.
 */
export function compileSchemas(
  schemas: readonly { schema: JsonSchema; label: string }[],
): ValidateFunction[] {
  const ajv = createAjv();
  return schemas.map(({ schema, label }) => {
    try {
      return ajv.compile(schema);
    } catch (cause) {
      throw new TypeError(`Cannot compile schema ${label}: ${(cause as Error).message}`, {
        cause,
      });
    }
  });
}
