// Builds the RegistryMirror CustomResourceDefinition from the TypeBox schemas, so the CRD in crds/
// and the operator's types cannot drift. A CRD takes a structural subset of JSON Schema; toStructural
// rewrites the few TypeBox shapes it does not accept.
import type { TSchema } from '@sinclair/typebox';
import {
  GROUP, KIND, PLURAL, SINGULAR, SHORT_NAMES, VERSION, RegistryMirrorSchema,
} from './registry-mirror.ts';

type JsonSchema = Record<string, unknown>;

/** Rewrites a TypeBox JSON schema into a structural OpenAPI v3 schema a CRD accepts. */
export function toStructural(schema: TSchema | JsonSchema): JsonSchema {
  // JSON round trip drops TypeBox's symbol-keyed markers and $id-free copies stay plain data.
  const plain = JSON.parse(JSON.stringify(schema)) as JsonSchema;
  return rewrite(plain);
}

function rewrite(node: JsonSchema): JsonSchema {
  const out: JsonSchema = {};
  // A union of string literals is an enum of strings in a CRD (no anyOf/const there).
  const anyOf = node.anyOf as JsonSchema[] | undefined;
  if (anyOf) {
    if (!anyOf.every((s) => typeof s.const === 'string')) {
      throw new Error(`only unions of string literals are supported in the CRD schema: ${JSON.stringify(node)}`);
    }
    out.type = 'string';
    out.enum = anyOf.map((s) => s.const);
  }
  if (typeof node.const === 'string') {
    out.type = 'string';
    out.enum = [node.const];
  }
  for (const [key, value] of Object.entries(node)) {
    if (key === 'anyOf' || key === 'const') continue;
    if (key === 'additionalProperties') {
      // `false` is how TypeBox closes an object; a CRD prunes unknown fields instead.
      if (value === false) continue;
      if (typeof value === 'object' && value !== null) out[key] = rewrite(value as JsonSchema);
      continue;
    }
    if (key === 'properties') {
      const properties = value as Record<string, JsonSchema>;
      out[key] = Object.fromEntries(Object.entries(properties).map(([name, sub]) => [name, rewrite(sub)]));
      continue;
    }
    if (key === 'items') {
      out[key] = rewrite(value as JsonSchema);
      continue;
    }
    if (key === 'required' && Array.isArray(value) && value.length === 0) continue;
    out[key] = value;
  }
  // No declared properties: a map (additionalProperties) or an object left to the API server (metadata).
  if (out.properties && Object.keys(out.properties as object).length === 0) delete out.properties;
  return out;
}

export const CRD_NAME = `${PLURAL}.${GROUP}`;

export function registryMirrorCrd(): JsonSchema {
  return {
    apiVersion: 'apiextensions.k8s.io/v1',
    kind: 'CustomResourceDefinition',
    metadata: {
      name: CRD_NAME,
      labels: { 'app.kubernetes.io/name': 'regmirror', 'app.kubernetes.io/part-of': 'regmirror' },
    },
    spec: {
      group: GROUP,
      scope: 'Namespaced',
      names: { kind: KIND, listKind: `${KIND}List`, plural: PLURAL, singular: SINGULAR, shortNames: SHORT_NAMES, categories: ['all'] },
      versions: [
        {
          name: VERSION,
          served: true,
          storage: true,
          subresources: { status: {} },
          additionalPrinterColumns: [
            { name: 'Endpoint', type: 'string', jsonPath: '.status.endpoint', description: 'Where nodes pull through' },
            { name: 'Ready', type: 'string', jsonPath: '.status.conditions[?(@.type=="Ready")].status' },
            { name: 'Reason', type: 'string', jsonPath: '.status.conditions[?(@.type=="Ready")].reason', priority: 1 },
            { name: 'Nodes', type: 'integer', jsonPath: '.status.nodes.configured', description: 'Nodes configured to use the mirror' },
            { name: 'Desired', type: 'integer', jsonPath: '.status.nodes.desired', priority: 1 },
            { name: 'Age', type: 'date', jsonPath: '.metadata.creationTimestamp' },
          ],
          schema: { openAPIV3Schema: toStructural(RegistryMirrorSchema) },
        },
      ],
    },
  };
}
