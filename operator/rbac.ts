// What the operator may do, in one place. operator/api/generate.ts renders it to operator/rbac.yaml,
// which the Helm chart takes as is. The ClusterRole holds the rules for RegistryMirror namespaces; to
// watch a few namespaces only, bind it with a RoleBinding in each instead of the ClusterRoleBinding.
import { GROUP, PLURAL } from './api/registry-mirror.ts';

export interface PolicyRule {
  apiGroups: string[];
  resources: string[];
  verbs: string[];
}

export const OPERATOR_NAME = 'regmirror-operator';

/** Rules over RegistryMirrors and the objects they own (server-side apply creates and patches). */
export const OPERATOR_RULES: PolicyRule[] = [
  { apiGroups: [GROUP], resources: [PLURAL], verbs: ['get', 'list', 'watch', 'patch'] },
  { apiGroups: [GROUP], resources: [`${PLURAL}/status`], verbs: ['patch'] },
  // Owner references with blockOwnerDeletion need this where OwnerReferencesPermissionEnforcement runs.
  { apiGroups: [GROUP], resources: [`${PLURAL}/finalizers`], verbs: ['update'] },
  // Secrets: read the ones a RegistryMirror references, write the one it owns.
  { apiGroups: [''], resources: ['configmaps', 'secrets', 'services', 'persistentvolumeclaims'], verbs: ['get', 'list', 'watch', 'create', 'patch'] },
  { apiGroups: ['apps'], resources: ['deployments'], verbs: ['get', 'list', 'watch', 'create', 'patch'] },
  // delete: the cleanup DaemonSet has no owner for the garbage collector to follow (reconciler.ts finalize).
  { apiGroups: ['apps'], resources: ['daemonsets'], verbs: ['get', 'list', 'watch', 'create', 'patch', 'delete'] },
  { apiGroups: [''], resources: ['events'], verbs: ['create', 'patch'] },
];

/** Rules in the operator's own namespace: the leader-election Lease. */
export const LEADER_ELECTION_RULES: PolicyRule[] = [
  { apiGroups: ['coordination.k8s.io'], resources: ['leases'], verbs: ['get', 'create', 'update'] },
];

export interface RbacOptions {
  namespace: string;
  serviceAccount: string;
}

export function operatorRbac({ namespace, serviceAccount }: RbacOptions): Record<string, unknown>[] {
  const labels = { 'app.kubernetes.io/name': 'regmirror', 'app.kubernetes.io/component': 'operator' };
  const subject = { kind: 'ServiceAccount', name: serviceAccount, namespace };
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
    {
      apiVersion: 'rbac.authorization.k8s.io/v1',
      kind: 'Role',
      metadata: { name: `${OPERATOR_NAME}-leader-election`, namespace, labels },
      rules: LEADER_ELECTION_RULES,
    },
    {
      apiVersion: 'rbac.authorization.k8s.io/v1',
      kind: 'RoleBinding',
      metadata: { name: `${OPERATOR_NAME}-leader-election`, namespace, labels },
      roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'Role', name: `${OPERATOR_NAME}-leader-election` },
      subjects: [subject],
    },
  ];
}

export const DEFAULT_RBAC_OPTIONS: RbacOptions = { namespace: 'regmirror-system', serviceAccount: OPERATOR_NAME };
