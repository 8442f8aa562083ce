// What the operator may do, in one place. operator/api/generate.ts renders it to operator/rbac.yaml,
// which the Helm chart takes as is. The ClusterRole holds the rules for RegistryMirror namespaces; to
// watch a few namespaces only, bind it with a RoleBinding in each instead of the ClusterRoleBinding.
// Two Roles hold what it does in its own namespace: the leader-election Lease, and the cleanup
// DaemonSets of mirrors whose namespace is being deleted (reconciler.ts startRelocatedCleanup).
import { GROUP, PLURAL } from './api/registry-mirror.ts';

export interface PolicyRule {
  apiGroups: string[];
  resources: string[];
  verbs: string[];
}

export const OPERATOR_NAME = 'regmirror-operator';

/**
 * Rules over RegistryMirrors themselves. A namespaced install (the chart's watchNamespaces) binds
 * these cluster-wide as well, in ClusterRole MIRRORS_ROLE: the RoleBinding that grants everything
 * else in a namespace is deleted with that namespace, before the finalizer of a RegistryMirror in
 * it is done, and without these the operator could neither follow nor release it (the namespace
 * would stay Terminating).
 */
export const MIRROR_RULES: PolicyRule[] = [
  { apiGroups: [GROUP], resources: [PLURAL], verbs: ['get', 'list', 'watch', 'patch'] },
  { apiGroups: [GROUP], resources: [`${PLURAL}/status`], verbs: ['patch'] },
  // Owner references with blockOwnerDeletion need this where OwnerReferencesPermissionEnforcement runs.
  { apiGroups: [GROUP], resources: [`${PLURAL}/finalizers`], verbs: ['update'] },
];

export const MIRRORS_ROLE = `${OPERATOR_NAME}-registrymirrors`;

/**
 * Reading Nodes: when nodeConfig.tolerations narrows, the operator finds the nodes whose agent a
 * taint now keeps off, to clean them (reconciler.ts nodesLeftByTaint). Nodes are cluster-scoped,
 * which a RoleBinding does not grant: a namespaced install binds these cluster-wide as well, in
 * ClusterRole NODES_ROLE. Without them those nodes are not cleaned, and a Warning says so.
 */
export const NODE_RULES: PolicyRule[] = [
  { apiGroups: [''], resources: ['nodes'], verbs: ['get', 'list'] },
];

export const NODES_ROLE = `${OPERATOR_NAME}-nodes`;

/** Rules over RegistryMirrors and the objects they own (server-side apply creates and patches). */
export const OPERATOR_RULES: PolicyRule[] = [
  ...MIRROR_RULES,
  // Secrets and ConfigMaps: get the ones a RegistryMirror references (credentials, htpasswd, TLS,
  // upstream CAs), list and watch the metadata of all of them (which says whom a change concerns),
  // write the ones it owns. Granted per namespace where a RoleBinding binds this ClusterRole.
  { apiGroups: [''], resources: ['configmaps', 'secrets', 'services', 'persistentvolumeclaims'], verbs: ['get', 'list', 'watch', 'create', 'patch'] },
  { apiGroups: ['apps'], resources: ['deployments'], verbs: ['get', 'list', 'watch', 'create', 'patch'] },
  // delete: the cleanup DaemonSet has no owner for the garbage collector to follow (reconciler.ts finalize).
  { apiGroups: ['apps'], resources: ['daemonsets'], verbs: ['get', 'list', 'watch', 'create', 'patch', 'delete'] },
  { apiGroups: [''], resources: ['events'], verbs: ['create', 'patch'] },
  ...NODE_RULES,
];

/** Rules in the operator's own namespace: the leader-election Lease. */
export const LEADER_ELECTION_RULES: PolicyRule[] = [
  { apiGroups: ['coordination.k8s.io'], resources: ['leases'], verbs: ['get', 'create', 'update'] },
];

/**
 * Rules in the operator's own namespace: cleanup DaemonSets for mirrors whose namespace is being
 * deleted (it takes no new objects). Bound whatever the install's scope: a namespaced install has
 * no other rights there. No list/watch: the finalizer reads its own by name.
 */
export const NODE_CLEANUP_RULES: PolicyRule[] = [
  { apiGroups: ['apps'], resources: ['daemonsets'], verbs: ['get', 'create', 'patch', 'delete'] },
];

export interface RbacOptions {
  namespace: string;
  serviceAccount: string;
}

export function operatorRbac({ namespace, serviceAccount }: RbacOptions): Record<string, unknown>[] {
  const labels = { 'app.kubernetes.io/name': 'regmirror', 'app.kubernetes.io/component': 'operator' };
  const subject = { kind: 'ServiceAccount', name: serviceAccount, namespace };
  const ownNamespaceRole = (suffix: string, rules: PolicyRule[]) => [
    { apiVersion: 'rbac.authorization.k8s.io/v1', kind: 'Role', metadata: { name: `${OPERATOR_NAME}-${suffix}`, namespace, labels }, rules },
    {
      apiVersion: 'rbac.authorization.k8s.io/v1',
      kind: 'RoleBinding',
      metadata: { name: `${OPERATOR_NAME}-${suffix}`, namespace, labels },
      roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'Role', name: `${OPERATOR_NAME}-${suffix}` },
      subjects: [subject],
    },
  ];
  return [
    { apiVersion: 'v1', kind: 'ServiceAccount', metadata: { name: serviceAccount, namespace, labels } },
    { apiVersion: 'rbac.authorization.k8s.io/v1', kind: 'ClusterRole', metadata: { name: OPERATOR_NAME, labels }, rules: OPERATOR_RULES },
    {
      apiVersion: 'rbac.authorization.k8s.io/v1',
      kind: 'ClusterRoleBinding',
      metadata: { name: OPERATOR_NAME, labels },
      roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'ClusterRole', name: OPERATOR_NAME },
      subjects: [subject],
    },
    ...ownNamespaceRole('leader-election', LEADER_ELECTION_RULES),
    ...ownNamespaceRole('node-cleanup', NODE_CLEANUP_RULES),
  ];
}

export const DEFAULT_RBAC_OPTIONS: RbacOptions = { namespace: 'regmirror-system', serviceAccount: OPERATOR_NAME };
